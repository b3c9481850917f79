//! The panels: label/value rows (power, battery, inverter, energy) that
//! drop their extras to fit, and the topics with their last-seen ages.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

use crate::decode::FAMILIES;
use crate::decode::metric;
use crate::energy::Counter;

use super::super::state::{DeviceView, Family};
use super::text::{NONE, age, clip, clock, num, schedule_name, short_name, watts};
use super::{Theme, View};

/// One row of a panel: a label on the left, a value on the right. Extra
/// rows are shown when there is room.
pub(super) struct Row {
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

/// The panels of one frame: what they draw from, and the layout's density.
pub(super) struct Panels<'v, 'a> {
    pub(super) view: &'v View<'a>,
    pub(super) device: Option<&'a DeviceView>,
    pub(super) roomy: bool,
}

impl Panels<'_, '_> {
    pub(super) fn value(&self, metric: &str) -> Option<f64> {
        self.device.and_then(|d| d.value(metric))
    }

    pub(super) fn theme(&self) -> Theme {
        self.view.theme
    }

    pub(super) fn block<'t>(&self, title: Line<'t>) -> Block<'t> {
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
    pub(super) fn draw(&self, frame: &mut Frame<'_>, area: Rect, title: &str, rows: &[Row]) {
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

    pub(super) fn power_rows(&self) -> Vec<Row> {
        let theme = self.theme();
        let grid = self.value(metric::GRID_POWER);
        let house = self.value(metric::HOUSE_POWER);
        let battery = self.value(metric::BATTERY_POWER);
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
        if let Some(w) = self.value(metric::GRID_POWER_INVERTER) {
            rows.push(Row::new("Inverter grid", watts(w)).extra());
        }
        if let Some(w) = self.value(metric::AUX_POWER) {
            rows.push(Row::new("AUX1", watts(w)).extra());
        }
        if let (Some(v), Some(a)) = (
            self.value(metric::BATTERY_VOLTAGE),
            self.value(metric::BATTERY_CURRENT),
        ) {
            rows.push(Row::new("Battery DC", format!("{} V {} A", num(v, 1), num(a, 1))).extra());
        }
        rows
    }

    /// The state of charge as a bar, red under 20 % and yellow under 50 %.
    fn soc_row(&self) -> Row {
        let theme = self.theme();
        let Some(soc) = self.value(metric::SOC) else {
            return Row::new("SOC", NONE);
        };
        let color = if soc < 20.0 {
            Color::Red
        } else if soc < 50.0 {
            Color::Yellow
        } else {
            Color::Green
        };
        let bar_width = 12;
        let filled = ((soc.clamp(0.0, 100.0) / 100.0) * bar_width as f64).round() as usize;
        Row::spans(
            "SOC",
            vec![
                Span::styled("█".repeat(filled), theme.fg(color)),
                Span::styled("░".repeat(bar_width - filled), theme.label()),
                Span::styled(
                    format!(" {} %", num(soc, 1)),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
            ],
        )
    }

    /// Each module's state of charge.
    fn modules_row(&self) -> Row {
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
        Row::new("Modules", text)
    }

    pub(super) fn battery_rows(&self) -> Vec<Row> {
        let mut rows = vec![self.soc_row(), self.modules_row()];
        rows.push(Row::new(
            "Health",
            match (self.value(metric::SOH), self.value(metric::SOH_MIN)) {
                (Some(avg), Some(min)) => format!("{} % (min {})", num(avg, 0), num(min, 0)),
                (Some(avg), None) => format!("{} %", num(avg, 0)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Cycles",
            match (
                self.value(metric::CYCLE_COUNT_AVG),
                self.value(metric::CYCLE_COUNT_MAX),
            ) {
                (Some(avg), Some(max)) => format!("{} (max {})", num(avg, 0), num(max, 0)),
                (Some(avg), None) => num(avg, 0),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Cell spread",
            match (
                self.value(metric::CELL_VOLTAGE_MIN),
                self.value(metric::CELL_VOLTAGE_MAX),
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
                self.value(metric::CELL_TEMP_MIN),
                self.value(metric::CELL_TEMP_AVG),
                self.value(metric::CELL_TEMP_MAX),
            ) {
                (Some(min), _, Some(max)) => format!("{}–{} °C", num(min, 1), num(max, 1)),
                (_, Some(avg), _) => format!("{} °C", num(avg, 1)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "BMS temp",
            match (
                self.value(metric::BMS_TEMP_AVG),
                self.value(metric::BMS_TEMP_MAX),
            ) {
                (Some(avg), Some(max)) => format!("{} (max {}) °C", num(avg, 1), num(max, 1)),
                (Some(avg), None) => format!("{} °C", num(avg, 1)),
                _ => NONE.into(),
            },
        ));
        if let Some(v) = self.value(metric::BATTERY_CAPACITY) {
            rows.push(Row::new("Usable capacity", format!("{} %", num(v, 0))).extra());
        }
        if let (Some(v), Some(a)) = (
            self.value(metric::MODULE_VOLTAGE_AVG),
            self.value(metric::BATTERY_CURRENT_TOTAL),
        ) {
            rows.push(Row::new("BMS DC", format!("{} V {} A", num(v, 2), num(a, 2))).extra());
        }
        rows
    }

    /// Emergency power: its mode and reserve, and its schedule when set.
    fn eps_rows(&self) -> Vec<Row> {
        let mode = match (
            self.value(metric::EPS_MODE),
            self.value(metric::EPS_RESERVE),
        ) {
            (Some(mode), reserve) => {
                let state = if mode == 1.0 { "on" } else { "off" };
                match reserve {
                    Some(r) => format!("{state}, reserve {} %", num(r, 0)),
                    None => state.into(),
                }
            }
            (None, Some(r)) => format!("reserve {} %", num(r, 0)),
            _ => NONE.into(),
        };
        let mut rows = vec![Row::new("EPS", mode)];
        if let Some(on) = self.value(metric::EPS_SCHEDULE_EVENT) {
            let reserve = self
                .value(metric::EPS_SCHEDULE_RESERVE)
                .map(|r| format!(", {} %", num(r, 0)))
                .unwrap_or_default();
            let state = if on == 1.0 { "on" } else { "off" };
            rows.push(Row::new("EPS schedule", format!("{state}{reserve}")).extra());
        }
        rows
    }

    pub(super) fn inverter_rows(&self) -> Vec<Row> {
        let v_hz = |v: &str, hz: &str| match (self.value(v), self.value(hz)) {
            (Some(v), Some(hz)) => format!("{} V {} Hz", num(v, 1), num(hz, 2)),
            (Some(v), None) => format!("{} V", num(v, 1)),
            _ => NONE.into(),
        };
        let mut rows = vec![
            Row::new("Grid", v_hz(metric::GRID_VOLTAGE, metric::GRID_FREQUENCY)),
            Row::new(
                "Output",
                v_hz(metric::OUTPUT_VOLTAGE, metric::OUTPUT_FREQUENCY),
            ),
        ];
        if let Some(w) = self.value(metric::OUTPUT_ACTIVE_POWER) {
            let va = self
                .value(metric::OUTPUT_APPARENT_POWER)
                .map(|va| format!(" {} VA", num(va, 0)))
                .unwrap_or_default();
            rows.push(Row::new("Output power", format!("{}{va}", watts(w))).extra());
        }
        rows.push(Row::new(
            "Inverter temp",
            self.value(metric::INVERTER_TEMP)
                .map_or(NONE.into(), |t| format!("{} °C", num(t, 1))),
        ));
        rows.push(Row::new(
            "Boost/inner",
            match (
                self.value(metric::BOOST_TEMP),
                self.value(metric::INNER_TEMP),
            ) {
                (Some(b), Some(i)) => format!("{}/{} °C", num(b, 1), num(i, 1)),
                (Some(b), None) => format!("{} °C", num(b, 1)),
                (None, Some(i)) => format!("–/{} °C", num(i, 1)),
                _ => NONE.into(),
            },
        ));
        rows.push(Row::new(
            "Schedule",
            match self.value(metric::SCHEDULE_EVENT) {
                Some(code) => {
                    let setpoint = self
                        .value(metric::SCHEDULE_SETPOINT)
                        .map(|w| format!(" {} W", num(w, 0)))
                        .unwrap_or_default();
                    format!("{}{setpoint}", schedule_name(code))
                }
                None => NONE.into(),
            },
        ));
        rows.extend(self.eps_rows());
        rows.push(Row::new(
            "Max chg/dis",
            match (
                self.value(metric::MAX_CHARGE_POWER),
                self.value(metric::MAX_DISCHARGE_POWER),
            ) {
                (Some(c), Some(d)) => format!("{}/{} W", num(c.abs(), 0), num(d.abs(), 0)),
                (Some(c), None) => format!("{}/– W", num(c.abs(), 0)),
                (None, Some(d)) => format!("–/{} W", num(d.abs(), 0)),
                _ => NONE.into(),
            },
        ));
        if let Some(state) = self.value(metric::FFR_CONTROLLER_STATE) {
            rows.push(Row::new("FFR controller", num(state, 0)).extra());
        }
        rows
    }

    pub(super) fn energy_title(&self) -> String {
        match self.device {
            Some(d) => format!("Energy since {}", clock(d.first)),
            None => "Energy".into(),
        }
    }

    pub(super) fn energy_rows(&self) -> Vec<Row> {
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

    pub(super) fn draw_topics(&self, frame: &mut Frame<'_>, area: Rect) {
        let block = self.block(Line::from(" Topics, last seen "));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(device) = self.device else {
            return;
        };
        let now = self.view.now;
        let mut families: Vec<(&str, &Family)> = device.families().collect();
        families.sort_by_key(|(name, _)| {
            (
                FAMILIES
                    .iter()
                    .position(|f| f.suffix == *name)
                    .unwrap_or(FAMILIES.len()),
                *name,
            )
        });
        let style_of = |f: &Family| {
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
            let cell = |(name, f): &(&str, &Family)| {
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
}
