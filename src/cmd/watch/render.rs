//! Drawing the view: a pure function of the [`WatchState`] and a few
//! facts about the session ([`View`]) onto a ratatui [`Frame`]. The render
//! tests draw it on ratatui's `TestBackend`; the terminal draws exactly the
//! same.
//!
//! Two densities: at 80×24 the panels have a title line and no side
//! borders, the topics sit in two columns with short names; from 120×36 the
//! panels are boxed, and show more rows (the extras) and the topics one per
//! line with their usual interval.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Clear, Dataset, GraphType, Paragraph};

use crate::decode::KNOWN_SUFFIXES;
use crate::energy::Counter;
use crate::reading::Timestamp;

use super::state::{DeviceView, HISTORY_SECS, WatchState};

/// The smallest terminal the view is drawn in.
pub const MIN_WIDTH: u16 = 80;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 24;

/// From this size on, the roomy layout.
const ROOMY_WIDTH: u16 = 120;
const ROOMY_HEIGHT: u16 = 36;

/// Colours, or none (`NO_COLOR`): without colour the view keeps its
/// emphasis (bold, reversed, dim), which `NO_COLOR` does not forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// Colours on, unless `NO_COLOR` is set to anything but the empty
    /// string (<https://no-color.org>).
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// With or without colours.
    pub fn new(color: bool) -> Theme {
        Theme { color }
    }

    fn fg(&self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn alarm(&self) -> Style {
        if self.color {
            Style::new()
                .bg(Color::Red)
                .fg(Color::White)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }

    fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn label(&self) -> Style {
        self.fg(Color::Gray)
    }

    /// A topic not seen for longer than its usual interval allows.
    pub fn stale(&self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }
}

/// How the session is getting its data, for the header and footer.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Live from a broker.
    Live {
        /// `host:port`.
        endpoint: String,
        /// Whether the link is up.
        connected: bool,
    },
    /// A capture being played.
    Capture {
        /// The file's name.
        name: String,
        /// `×10`, `max`.
        speed: String,
        /// The whole capture has been played.
        ended: bool,
    },
}

/// Everything drawn besides the state.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// What is known.
    pub state: &'a WatchState,
    /// The device shown; `None` before any data.
    pub device: Option<&'a str>,
    /// The time the view is drawn for: the wall clock live, the capture's
    /// clock in a playback.
    pub now: Timestamp,
    /// Where the data comes from.
    pub source: Source,
    /// `p` was pressed.
    pub paused: bool,
    /// `?` was pressed.
    pub help: bool,
    /// The newest log line, if any.
    pub note: Option<String>,
    /// Colours.
    pub theme: Theme,
}

/// Draws the whole view.
pub fn draw(frame: &mut Frame<'_>, view: &View<'_>) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "pv3 watch needs {MIN_WIDTH}×{MIN_HEIGHT}; this terminal is {}×{} (q quits)",
            area.width, area.height
        );
        frame.render_widget(
            Paragraph::new(text)
                .alignment(Alignment::Center)
                .wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return;
    }
    let roomy = area.width >= ROOMY_WIDTH && area.height >= ROOMY_HEIGHT;
    let top_height = if roomy { 11 } else { 8 };
    let [header, band, top, middle, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(top_height),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, view);
    let device = view.device.and_then(|d| view.state.device(d));
    draw_band(frame, band, view, device);
    let panels = Panels {
        view,
        device,
        roomy,
    };
    // At 80 columns the battery's rows are the longest.
    let widths = if roomy {
        [Constraint::Fill(1); 3]
    } else {
        [
            Constraint::Fill(25),
            Constraint::Fill(28),
            Constraint::Fill(25),
        ]
    };
    let [power, battery, inverter] = Layout::horizontal(widths).spacing(1).areas(top);
    panels.draw(frame, power, "Power", &panels.power_rows());
    panels.draw(frame, battery, "Battery", &panels.battery_rows());
    panels.draw(frame, inverter, "Inverter", &panels.inverter_rows());

    let side = if roomy {
        (area.width / 3).clamp(40, 56)
    } else {
        32
    };
    let [chart, right] = Layout::horizontal([Constraint::Min(0), Constraint::Length(side)])
        .spacing(1)
        .areas(middle);
    panels.draw_chart(frame, chart);
    let energy_height = if roomy { 7 } else { 4 };
    let [energy, topics] =
        Layout::vertical([Constraint::Length(energy_height), Constraint::Min(0)]).areas(right);
    panels.draw(frame, energy, &panels.energy_title(), &panels.energy_rows());
    panels.draw_topics(frame, topics);
    draw_footer(frame, footer, view);
    if view.help {
        draw_help(frame, area, view.theme);
    }
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let theme = view.theme;
    let mut left = vec![Span::styled(" pv3 watch ", theme.title())];
    let ids: Vec<&str> = view.state.device_ids().map(|d| &**d).collect();
    match view.device {
        Some(device) => {
            left.push(Span::styled(
                device.to_owned(),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            if ids.len() > 1 {
                let n = ids.iter().position(|d| *d == device).map_or(0, |i| i + 1);
                left.push(Span::raw(format!(" ({n}/{}, d: next)", ids.len())));
            }
        }
        None => left.push(Span::styled("waiting for data", theme.stale())),
    }
    left.push(Span::raw("  "));
    match &view.source {
        Source::Live {
            endpoint,
            connected,
        } => {
            if *connected {
                left.push(Span::styled("● ", theme.fg(Color::Green)));
            } else {
                left.push(Span::styled("○ ", theme.fg(Color::Red)));
            }
            left.push(Span::raw(endpoint.clone()));
            if !connected {
                left.push(Span::raw(" (connecting)"));
            }
        }
        Source::Capture { name, speed, ended } => {
            left.push(Span::raw(format!("capture {name} {speed}")));
            if *ended {
                left.push(Span::raw(" (ended)"));
            }
        }
    }
    let mut right = vec![Span::raw(clock(view.now))];
    if view.paused {
        right.push(Span::raw(" "));
        right.push(Span::styled(
            " PAUSED ",
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    right.push(Span::raw(" "));
    let width = right.iter().map(Span::width).sum::<usize>() as u16;
    let [l, r] = Layout::horizontal([Constraint::Min(0), Constraint::Length(width)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(left)), l);
    frame.render_widget(Paragraph::new(Line::from(right)), r);
}

fn draw_band(frame: &mut Frame<'_>, area: Rect, view: &View<'_>, device: Option<&DeviceView>) {
    let theme = view.theme;
    let Some((states, _)) = device.and_then(DeviceView::alarms) else {
        let text = if device.is_some_and(|d| d.value("alarm_count").is_some()) {
            " no alarm flags reported"
        } else {
            " alarms: not reported yet"
        };
        frame.render_widget(Paragraph::new(Span::styled(text, theme.stale())), area);
        return;
    };
    let active: Vec<&str> = states
        .iter()
        .filter(|(_, on)| **on)
        .map(|(k, _)| k.as_str())
        .collect();
    if active.is_empty() {
        let text = format!(" no active alarms ({} flags clear)", states.len());
        frame.render_widget(
            Paragraph::new(Span::styled(text, theme.fg(Color::Green))),
            area,
        );
        return;
    }
    let noun = if active.len() == 1 { "ALARM" } else { "ALARMS" };
    let text = format!(" {} {noun}: {}", active.len(), active.join(", "));
    frame.render_widget(Paragraph::new(Span::raw(text)).style(theme.alarm()), area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let theme = view.theme;
    let keys = Line::from(vec![
        Span::styled(" q", theme.title()),
        Span::raw(" quit  "),
        Span::styled("d", theme.title()),
        Span::raw(" device  "),
        Span::styled("p", theme.title()),
        Span::raw(if view.paused { " resume  " } else { " pause  " }),
        Span::styled("?", theme.title()),
        Span::raw(" help "),
    ]);
    let width = keys.width() as u16;
    let [k, note] = Layout::horizontal([Constraint::Length(width), Constraint::Min(0)])
        .spacing(1)
        .areas(area);
    frame.render_widget(Paragraph::new(keys), k);
    if let Some(text) = &view.note {
        frame.render_widget(
            Paragraph::new(Span::styled(text.clone(), theme.stale())).alignment(Alignment::Right),
            note,
        );
    }
}

fn draw_help(frame: &mut Frame<'_>, area: Rect, theme: Theme) {
    let lines = [
        "q, Esc, Ctrl-C  quit",
        "d               next device (with --device-id +)",
        "p               pause / resume (a capture stops playing)",
        "?               this help",
        "",
        "Power: balance = house − grid − battery; more than the",
        "  meters account for is \"solar / other\", less is",
        "  \"unmetered load\". Grid + is import, battery + is",
        "  discharging.",
        "Topics: dimmed when not seen for 3× their usual interval.",
        "Energy: kWh since the view started (trapezoids, gaps over",
        "  60 s not counted). Times are UTC.",
    ];
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4;
    let height = lines.len() as u16 + 2;
    let x = area.x + area.width.saturating_sub(width) / 2;
    let y = area.y + area.height.saturating_sub(height) / 2;
    let popup = Rect::new(x, y, width.min(area.width), height.min(area.height));
    frame.render_widget(Clear, popup);
    let text: Vec<Line<'_>> = lines.iter().map(|l| Line::raw(format!(" {l}"))).collect();
    frame.render_widget(
        Paragraph::new(text).block(
            Block::bordered()
                .title(Span::styled(" help ", theme.title()))
                .border_style(theme.title()),
        ),
        popup,
    );
}

/// One row of a panel: a label on the left, a value on the right. Extra
/// rows are shown when there is room.
struct Row {
    label: String,
    value: Vec<Span<'static>>,
    extra: bool,
}

impl Row {
    fn new(label: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            label: label.into(),
            value: vec![Span::raw(value.into())],
            extra: false,
        }
    }

    fn styled(label: impl Into<String>, value: impl Into<String>, style: Style) -> Row {
        Row {
            label: label.into(),
            value: vec![Span::styled(value.into(), style)],
            extra: false,
        }
    }

    fn spans(label: impl Into<String>, value: Vec<Span<'static>>) -> Row {
        Row {
            label: label.into(),
            value,
            extra: false,
        }
    }

    fn extra(mut self) -> Row {
        self.extra = true;
        self
    }
}

/// What a missing value shows.
const NONE: &str = "–";

struct Panels<'v, 'a> {
    view: &'v View<'a>,
    device: Option<&'a DeviceView>,
    roomy: bool,
}

impl Panels<'_, '_> {
    fn value(&self, metric: &str) -> Option<f64> {
        self.device.and_then(|d| d.value(metric))
    }

    fn theme(&self) -> Theme {
        self.view.theme
    }

    fn block<'t>(&self, title: Line<'t>) -> Block<'t> {
        let block = if self.roomy {
            Block::bordered()
        } else {
            Block::new().borders(Borders::TOP)
        };
        block
            .title(title)
            .title_style(self.theme().title())
            .border_style(self.theme().label())
    }

    /// Draws a titled panel of rows, dropping extras (then the last rows)
    /// to fit.
    fn draw(&self, frame: &mut Frame<'_>, area: Rect, title: &str, rows: &[Row]) {
        let block = self.block(Line::from(format!(" {title} ")));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let room = inner.height as usize;
        let mut shown: Vec<&Row> = rows.iter().collect();
        while shown.len() > room {
            match shown.iter().rposition(|r| r.extra) {
                Some(i) => {
                    shown.remove(i);
                }
                None => shown.truncate(room),
            }
        }
        let width = inner.width as usize;
        let lines: Vec<Line<'_>> = shown.iter().map(|row| self.row_line(row, width)).collect();
        frame.render_widget(Paragraph::new(lines), inner);
    }

    /// `label ··· value`, the value right-aligned within `width` (at most
    /// 40 columns, so that a wide panel still reads as pairs).
    fn row_line(&self, row: &Row, width: usize) -> Line<'static> {
        let width = width.min(40);
        let value_width: usize = row.value.iter().map(Span::width).sum();
        let room = width.saturating_sub(value_width + 1);
        let label = clip(&row.label, room);
        let pad = width.saturating_sub(label.chars().count() + value_width);
        let mut spans = vec![
            Span::styled(label, self.theme().label()),
            Span::raw(" ".repeat(pad)),
        ];
        spans.extend(row.value.iter().cloned());
        Line::from(spans)
    }

    fn power_rows(&self) -> Vec<Row> {
        let theme = self.theme();
        let grid = self.value("grid_power");
        let house = self.value("house_power");
        let battery = self.value("battery_power");
        let mut rows = Vec::new();
        rows.push(match grid {
            Some(w) if w < 0.0 => Row::styled("Grid export", watts(-w), theme.fg(Color::Green)),
            Some(w) => Row::styled("Grid import", watts(w), theme.fg(Color::Red)),
            None => Row::new("Grid", NONE),
        });
        rows.push(Row::new("House", house.map_or(NONE.into(), watts)));
        rows.push(match battery {
            Some(w) if w > 0.0 => {
                Row::styled("Battery discharge", watts(w), theme.fg(Color::Yellow))
            }
            Some(w) if w < 0.0 => Row::styled("Battery charge", watts(-w), theme.fg(Color::Green)),
            Some(w) => Row::new("Battery idle", watts(w)),
            None => Row::new("Battery", NONE),
        });
        rows.push(match (grid, house, battery) {
            (Some(g), Some(h), Some(b)) => {
                let balance = h - g - b;
                if balance >= 0.05 {
                    Row::styled("Solar / other", watts(balance), theme.fg(Color::Green))
                } else if balance <= -0.05 {
                    Row::new("Unmetered load", watts(-balance))
                } else {
                    Row::new("Balance", watts(0.0))
                }
            }
            _ => Row::new("Balance", NONE),
        });
        if let Some(w) = self.value("grid_power_inverter") {
            rows.push(Row::new("Inverter grid", watts(w)).extra());
        }
        if let Some(w) = self.value("aux_power") {
            rows.push(Row::new("AUX1", watts(w)).extra());
        }
        if let (Some(v), Some(a)) = (self.value("battery_voltage"), self.value("battery_current")) {
            rows.push(Row::new("Battery DC", format!("{} V {} A", num(v, 1), num(a, 1))).extra());
        }
        rows
    }

    fn battery_rows(&self) -> Vec<Row> {
        let theme = self.theme();
        let mut rows = Vec::new();
        match self.value("soc") {
            Some(soc) => {
                let color = if soc < 20.0 {
                    Color::Red
                } else if soc < 50.0 {
                    Color::Yellow
                } else {
                    Color::Green
                };
                let bar_width = 12;
                let filled = ((soc.clamp(0.0, 100.0) / 100.0) * bar_width as f64).round() as usize;
                rows.push(Row::spans(
                    "SOC",
                    vec![
                        Span::styled("█".repeat(filled), theme.fg(color)),
                        Span::styled("░".repeat(bar_width - filled), theme.label()),
                        Span::styled(
                            format!(" {} %", num(soc, 1)),
                            Style::new().add_modifier(Modifier::BOLD),
                        ),
                    ],
                ));
            }
            None => rows.push(Row::new("SOC", NONE)),
        }
        let modules = self.device.map(DeviceView::module_socs).unwrap_or_default();
        let text = if modules.is_empty() {
            NONE.to_string()
        } else {
            modules
                .iter()
                .map(|(_, v)| num(*v, 1))
                .collect::<Vec<_>>()
                .join(" ")
        };
        rows.push(Row::new("Modules", text));
        rows.push(Row::new(
            "Health",
            match (self.value("soh"), self.value("soh_min")) {
                (Some(avg), Some(min)) => format!("{} % (min {})", num(avg, 0), num(min, 0)),
                (Some(avg), None) => format!("{} %", num(avg, 0)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Cycles",
            match (self.value("cycle_count_avg"), self.value("cycle_count_max")) {
                (Some(avg), Some(max)) => format!("{} (max {})", num(avg, 0), num(max, 0)),
                (Some(avg), None) => num(avg, 0),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Cell spread",
            match (
                self.value("cell_voltage_min"),
                self.value("cell_voltage_max"),
            ) {
                (Some(min), Some(max)) => {
                    format!("{} mV ({}–{})", num(max - min, 0), num(min, 0), num(max, 0))
                }
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Cell temp",
            match (
                self.value("cell_temp_min"),
                self.value("cell_temp_avg"),
                self.value("cell_temp_max"),
            ) {
                (Some(min), _, Some(max)) => format!("{}–{} °C", num(min, 1), num(max, 1)),
                (_, Some(avg), _) => format!("{} °C", num(avg, 1)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "BMS temp",
            match (self.value("bms_temp_avg"), self.value("bms_temp_max")) {
                (Some(avg), Some(max)) => format!("{} (max {}) °C", num(avg, 1), num(max, 1)),
                (Some(avg), None) => format!("{} °C", num(avg, 1)),
                _ => NONE.into(),
            },
        ));
        if let Some(v) = self.value("battery_capacity") {
            rows.push(Row::new("Usable capacity", format!("{} %", num(v, 0))).extra());
        }
        if let (Some(v), Some(a)) = (
            self.value("module_voltage_avg"),
            self.value("battery_current_total"),
        ) {
            rows.push(Row::new("BMS DC", format!("{} V {} A", num(v, 2), num(a, 2))).extra());
        }
        rows
    }

    fn inverter_rows(&self) -> Vec<Row> {
        let v_hz = |v: &str, hz: &str| match (self.value(v), self.value(hz)) {
            (Some(v), Some(hz)) => format!("{} V {} Hz", num(v, 1), num(hz, 2)),
            (Some(v), None) => format!("{} V", num(v, 1)),
            _ => NONE.into(),
        };
        let mut rows = vec![
            Row::new("Grid", v_hz("grid_voltage", "grid_frequency")),
            Row::new("Output", v_hz("output_voltage", "output_frequency")),
        ];
        if let Some(w) = self.value("output_active_power") {
            let va = self
                .value("output_apparent_power")
                .map(|va| format!(" {} VA", num(va, 0)))
                .unwrap_or_default();
            rows.push(Row::new("Output power", format!("{}{va}", watts(w))).extra());
        }
        rows.push(Row::new(
            "Inverter temp",
            self.value("inverter_temp")
                .map_or(NONE.into(), |t| format!("{} °C", num(t, 1))),
        ));
        rows.push(Row::new(
            "Boost/inner",
            match (self.value("boost_temp"), self.value("inner_temp")) {
                (Some(b), Some(i)) => format!("{}/{} °C", num(b, 1), num(i, 1)),
                (Some(b), None) => format!("{} °C", num(b, 1)),
                (None, Some(i)) => format!("–/{} °C", num(i, 1)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Schedule",
            match self.value("schedule_event") {
                Some(code) => {
                    let setpoint = self
                        .value("schedule_setpoint")
                        .map(|w| format!(" {} W", num(w, 0)))
                        .unwrap_or_default();
                    format!("{}{setpoint}", schedule_name(code))
                }
                None => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "EPS",
            match (self.value("eps_mode"), self.value("eps_reserve")) {
                (Some(mode), reserve) => {
                    let state = if mode == 1.0 { "on" } else { "off" };
                    match reserve {
                        Some(r) => format!("{state}, reserve {} %", num(r, 0)),
                        None => state.into(),
                    }
                }
                (None, Some(r)) => format!("reserve {} %", num(r, 0)),
                _ => NONE.into(),
            },
        ));
        if let Some(on) = self.value("eps_schedule_event") {
            let reserve = self
                .value("eps_schedule_reserve")
                .map(|r| format!(", {} %", num(r, 0)))
                .unwrap_or_default();
            let state = if on == 1.0 { "on" } else { "off" };
            rows.push(Row::new("EPS schedule", format!("{state}{reserve}")).extra());
        }
        rows.push(Row::new(
            "Max chg/dis",
            match (
                self.value("max_charge_power"),
                self.value("max_discharge_power"),
            ) {
                (Some(c), Some(d)) => format!("{}/{} W", num(c.abs(), 0), num(d.abs(), 0)),
                (Some(c), None) => format!("{}/– W", num(c.abs(), 0)),
                (None, Some(d)) => format!("–/{} W", num(d.abs(), 0)),
                _ => NONE.into(),
            },
        ));
        if let Some(state) = self.value("ffr_controller_state") {
            rows.push(Row::new("FFR controller", num(state, 0)).extra());
        }
        rows
    }

    fn energy_title(&self) -> String {
        match self.device {
            Some(d) => format!("Energy since {}", clock(d.first)),
            None => "Energy".into(),
        }
    }

    fn energy_rows(&self) -> Vec<Row> {
        let totals = self.view.device.and_then(|d| self.view.state.energy(d));
        let kwh = |c: Counter| totals.map_or(NONE.to_string(), |t| format!("{:.3}", t.get(c)));
        if self.roomy {
            [
                ("Grid import", Counter::GridImport),
                ("Grid export", Counter::GridExport),
                ("Battery charge", Counter::BatteryCharge),
                ("Battery discharge", Counter::BatteryDischarge),
                ("House", Counter::House),
            ]
            .into_iter()
            .map(|(label, c)| Row::new(label, format!("{} kWh", kwh(c))))
            .collect()
        } else {
            vec![
                Row::new(
                    "Grid in/out",
                    format!(
                        "{}/{} kWh",
                        kwh(Counter::GridImport),
                        kwh(Counter::GridExport)
                    ),
                ),
                Row::new(
                    "Battery in/out",
                    format!(
                        "{}/{} kWh",
                        kwh(Counter::BatteryCharge),
                        kwh(Counter::BatteryDischarge)
                    ),
                ),
                Row::new("House", format!("{} kWh", kwh(Counter::House))),
            ]
        }
    }

    fn draw_topics(&self, frame: &mut Frame<'_>, area: Rect) {
        let block = self.block(Line::from(" Topics, last seen "));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(device) = self.device else {
            return;
        };
        let now = self.view.now;
        let mut families: Vec<(&str, &super::state::Family)> = device.families().collect();
        families.sort_by_key(|(name, _)| {
            (
                KNOWN_SUFFIXES
                    .iter()
                    .position(|k| k == name)
                    .unwrap_or(KNOWN_SUFFIXES.len()),
                *name,
            )
        });
        let style_of = |f: &super::state::Family| {
            if f.is_stale(now) {
                self.theme().stale()
            } else {
                Style::new()
            }
        };
        if self.roomy {
            let mut lines = vec![Line::styled(
                format!("{:<26}{:>7}{:>9}{:>7}", "topic", "ago", "usually", "msgs"),
                self.theme().label(),
            )];
            for (name, f) in &families {
                let usual = f.interval().map_or("–".to_string(), |s| age(s.max(0.0)));
                lines.push(Line::styled(
                    format!(
                        "{:<26}{:>7}{:>9}{:>7}",
                        clip(name, 25),
                        age(now.seconds_since(f.last)),
                        usual,
                        f.messages
                    ),
                    style_of(f),
                ));
            }
            frame.render_widget(Paragraph::new(lines), inner);
        } else {
            let rows = inner.height as usize;
            let col_width = (inner.width / 2) as usize;
            let [left, right] =
                Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(inner);
            let cell = |(name, f): &(&str, &super::state::Family)| {
                let ago = age(now.seconds_since(f.last));
                let name_width = col_width.saturating_sub(ago.chars().count() + 2);
                Line::styled(
                    format!("{:<name_width$} {ago}", clip(short_name(name), name_width)),
                    style_of(f),
                )
            };
            let (first, second) = families.split_at(families.len().min(rows));
            frame.render_widget(
                Paragraph::new(first.iter().map(cell).collect::<Vec<_>>()),
                left,
            );
            frame.render_widget(
                Paragraph::new(second.iter().take(rows).map(cell).collect::<Vec<_>>()),
                right,
            );
        }
    }

    fn draw_chart(&self, frame: &mut Frame<'_>, area: Rect) {
        let theme = self.theme();
        let (grid_style, house_style, battery_style, soc_style) = (
            theme.fg(Color::Red),
            theme.fg(Color::Yellow),
            theme.fg(Color::Green),
            theme.fg(Color::Cyan),
        );
        // Without colour the series are told apart by their marks.
        let (grid_mark, house_mark, battery_mark) = if theme.color {
            (Marker::Braille, Marker::Braille, Marker::Braille)
        } else {
            (Marker::Braille, Marker::Dot, Marker::Block)
        };
        let legend = |name: &'static str, mark: &'static str, style: Style| {
            vec![
                Span::styled(mark, style),
                Span::raw(" "),
                Span::styled(name, style),
                Span::raw("  "),
            ]
        };
        let mut title = vec![Span::styled(" Last 15 min ", theme.title())];
        let (g, h, b) = if theme.color {
            ("━", "━", "━")
        } else {
            ("⣿", "•", "█")
        };
        title.extend(legend("grid", g, grid_style));
        title.extend(legend("house", h, house_style));
        title.extend(legend("battery W", b, battery_style));
        let block = self.block(Line::from(title));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let history = self.device.map(DeviceView::history);
        let Some(history) = history.filter(|h| !h.is_empty()) else {
            frame.render_widget(
                Paragraph::new(Span::styled("waiting for data", theme.stale())),
                inner,
            );
            return;
        };
        let now = self.view.now;
        let series = |pick: fn(&super::state::Sample) -> f64| -> Vec<(f64, f64)> {
            history
                .iter()
                .map(|p| (p.at.seconds_since(now), pick(p)))
                .filter(|(x, y)| y.is_finite() && *x >= -HISTORY_SECS)
                .collect()
        };
        let grid = series(|p| p.grid);
        let house = series(|p| p.house);
        let battery = series(|p| p.battery);
        let soc = series(|p| p.soc);
        let soc_height = (inner.height / 3).max(4);
        let [power_area, soc_area] =
            Layout::vertical([Constraint::Min(0), Constraint::Length(soc_height)]).areas(inner);

        let (lo, hi) = bounds(grid.iter().chain(&house).chain(&battery).map(|p| p.1), 0.0);
        let x_axis = || {
            Axis::default()
                .bounds([-HISTORY_SECS, 0.0])
                .style(theme.label())
        };
        let power = Chart::new(vec![
            dataset(&grid, grid_mark, grid_style),
            dataset(&house, house_mark, house_style),
            dataset(&battery, battery_mark, battery_style),
        ])
        .legend_position(None)
        .x_axis(x_axis().labels(vec![
            Span::raw("-15m"),
            Span::raw("-10m"),
            Span::raw("-5m"),
            Span::raw("now"),
        ]))
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .style(theme.label())
                .labels(vec![
                    Span::raw(axis_number(lo)),
                    Span::raw(axis_number((lo + hi) / 2.0)),
                    Span::raw(axis_number(hi)),
                ]),
        );
        frame.render_widget(power, power_area);

        let (soc_lo, soc_hi) = if soc.is_empty() {
            (0.0, 100.0)
        } else {
            let (lo, hi) = bounds(soc.iter().map(|p| p.1), f64::NAN);
            ((lo - 1.0).floor().max(0.0), (hi + 1.0).ceil().min(100.0))
        };
        let soc_chart = Chart::new(vec![dataset(&soc, Marker::Braille, soc_style)])
            .legend_position(None)
            .x_axis(x_axis())
            .y_axis(
                Axis::default()
                    .title(Span::styled("SOC %", soc_style))
                    .bounds([soc_lo, soc_hi])
                    .style(theme.label())
                    .labels(vec![
                        Span::raw(axis_number(soc_lo)),
                        Span::raw(axis_number(soc_hi)),
                    ]),
            );
        frame.render_widget(soc_chart, soc_area);
    }
}

fn dataset<'d>(data: &'d [(f64, f64)], marker: Marker, style: Style) -> Dataset<'d> {
    Dataset::default()
        .data(data)
        .marker(marker)
        .graph_type(GraphType::Line)
        .style(style)
}

/// The lowest and highest of `values` (and `include`, unless NaN),
/// widened so that a flat line sits inside the chart.
fn bounds(values: impl Iterator<Item = f64>, include: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values
        .chain(std::iter::once(include))
        .filter(|v| v.is_finite())
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1.0);
    (lo - pad, hi + pad)
}

fn axis_number(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{}k", num(v / 1000.0, 0))
    } else {
        num(v, 0)
    }
}

/// `v` with `decimals` decimals, never `-0`.
fn num(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_string()
    } else {
        text
    }
}

/// Watts: one decimal below 1 kW, none from there (the decimals are noise
/// at that size, and the rows stay within 80 columns).
fn watts(w: f64) -> String {
    let decimals = if w.abs() < 999.95 { 1 } else { 0 };
    format!("{} W", num(w, decimals))
}

/// The schedule's event code in words (p3-topics.md).
fn schedule_name(code: f64) -> String {
    match code {
        0.0 => "idle".into(),
        1.0 => "charge".into(),
        2.0 => "discharge".into(),
        3.0 => "force charge".into(),
        4.0 => "force discharge".into(),
        other => format!("event {}", num(other, 0)),
    }
}

/// `HH:MM:SS` UTC.
fn clock(at: Timestamp) -> String {
    let text = at.to_rfc3339();
    text.get(11..19)
        .map_or(text.clone(), |t| format!("{t} UTC"))
}

/// A short age: `0.4s`, `12s`, `3m`, `2h`.
fn age(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 100.0 {
        format!("{secs:.0}s")
    } else if secs < 6000.0 {
        format!("{:.0}m", (secs / 60.0).floor())
    } else {
        format!("{:.0}h", (secs / 3600.0).floor())
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The compact layout's names of the P3's topic families.
fn short_name(suffix: &str) -> &str {
    match suffix {
        "bms/soc" => "soc",
        "inverter/measurements" => "inverter",
        "inverter/alarms" => "alarms",
        "inverter/charge" => "charge",
        "pylontech/info" => "pylontech",
        "ffr/measurements" => "ct clamps",
        "schedule/event" => "schedule",
        "m4/maxpower" => "maxpower",
        "eps/status" => "eps",
        "eps_schedule/event" => "eps sched",
        "ffrcontroller/state" => "ffr ctrl",
        "safetycheck/state" => "safety",
        "safetycheck/measurements" => "safety meas",
        "m4/pylontech_alerts" => "pyl alerts",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_show_minus_zero() {
        assert_eq!(num(-0.04, 1), "0.0");
        assert_eq!(num(-0.06, 1), "-0.1");
        assert_eq!(num(413.793, 1), "413.8");
        assert_eq!(num(-0.0, 0), "0");
    }

    #[test]
    fn ages_stay_short() {
        assert_eq!(age(0.44), "0.4s");
        assert_eq!(age(12.4), "12s");
        assert_eq!(age(185.0), "3m");
        assert_eq!(age(7300.0), "2h");
        assert_eq!(age(-1.0), "0.0s");
    }
}
