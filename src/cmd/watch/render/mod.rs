//! Drawing the view: a pure function of the [`WatchState`] and a few
//! facts about the session ([`View`]) onto a ratatui [`Frame`]. The render
//! tests draw it on ratatui's `TestBackend`; the terminal draws exactly the
//! same.
//!
//! Two densities: at 80×24 the panels have a title line and no side
//! borders, the topics sit in two columns with short names; from 120×36 the
//! panels are boxed, and show more rows (the extras) and the topics one per
//! line with their usual interval.

//!
//! `mod.rs` lays the screen out and draws its edges (header, alarm band,
//! footer, help); `panels.rs` the panels of label/value rows and the topics;
//! `chart.rs` the 15-minute chart; `text.rs` how numbers, times and names
//! are written.

mod chart;
mod panels;
mod text;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::decode::metric;
use crate::reading::Timestamp;

use super::state::{DeviceView, WatchState};
use panels::Panels;
use text::clock;

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
        let text = if device.is_some_and(|d| d.value(metric::ALARM_COUNT).is_some()) {
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
