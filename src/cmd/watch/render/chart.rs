//! The chart of the last 15 minutes: grid, house and battery power, and
//! SOC below them, from the device's bounded ring.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};

use super::super::state::{DeviceView, HISTORY_SECS, Sample};
use super::panels::Panels;
use super::text::num;

impl Panels<'_, '_> {
    pub(super) fn draw_chart(&self, frame: &mut Frame<'_>, area: Rect) {
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
        let (g, h, b) = if theme.color {
            ("━", "━", "━")
        } else {
            ("⣿", "•", "█")
        };
        let mut title = vec![Span::styled(" Last 15 min ", theme.title())];
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
        let series = |pick: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
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
        let power = Chart::new(vec![
            dataset(&grid, grid_mark, grid_style),
            dataset(&house, house_mark, house_style),
            dataset(&battery, battery_mark, battery_style),
        ])
        .legend_position(None)
        .x_axis(time_axis(theme.label()).labels(vec![
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
        frame.render_widget(soc_chart(&soc, soc_style, theme.label()), soc_area);
    }
}

/// A series' entry in the chart's title: its mark and name in its style.
fn legend(name: &'static str, mark: &'static str, style: Style) -> [Span<'static>; 4] {
    [
        Span::styled(mark, style),
        Span::raw(" "),
        Span::styled(name, style),
        Span::raw("  "),
    ]
}

/// The last [`HISTORY_SECS`], ending now, in the labels' `style`.
fn time_axis(style: Style) -> Axis<'static> {
    Axis::default().bounds([-HISTORY_SECS, 0.0]).style(style)
}

/// The state of charge under the power chart, its axis fitted to the
/// values (0–100 % until there are some).
fn soc_chart(soc: &[(f64, f64)], style: Style, label: Style) -> Chart<'_> {
    let (lo, hi) = if soc.is_empty() {
        (0.0, 100.0)
    } else {
        let (lo, hi) = bounds(soc.iter().map(|p| p.1), f64::NAN);
        ((lo - 1.0).floor().max(0.0), (hi + 1.0).ceil().min(100.0))
    };
    Chart::new(vec![dataset(soc, Marker::Braille, style)])
        .legend_position(None)
        .x_axis(time_axis(label))
        .y_axis(
            Axis::default()
                .title(Span::styled("SOC %", style))
                .bounds([lo, hi])
                .style(label)
                .labels(vec![Span::raw(axis_number(lo)), Span::raw(axis_number(hi))]),
        )
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
