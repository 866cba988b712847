//! Line charts as SVG, written by hand: a time axis, a value axis, one polyline per series
//! (broken where a sample is missing) and a legend. Pure: the time is passed in, so the same
//! chart always renders to the same text. Every piece of text is escaped.

use std::fmt::Write;

use chrono::{DateTime, Duration as Span, Utc};

/// The picture's size in pixels, and where its plot area lies in it.
pub(crate) const WIDTH: f64 = 640.0;
pub(crate) const HEIGHT: f64 = 260.0;
const PLOT_LEFT: f64 = 64.0;
const PLOT_RIGHT: f64 = 470.0;
const PLOT_TOP: f64 = 34.0;
const PLOT_BOTTOM: f64 = 224.0;
const LEGEND_LEFT: f64 = 486.0;
const LEGEND_LINE: f64 = 15.0;

/// The shortest time axis: a fresh history shows its few samples spread over a minute, not
/// squeezed against one edge or stretched across the whole width.
const MIN_SPAN: i64 = 60;

/// What the values are, for the value axis' labels and range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Whole things (tasks).
    Count,
    /// Things per second (placements).
    PerSecond,
    /// 0 – 100 %.
    Percent,
    /// Bytes, labelled in KiB, MiB, GiB or TiB.
    Bytes,
}

/// One line: its name (in the legend and as the `data-series` attribute of its group), its
/// colour, and its values in time order (`None`: no value at that time, a gap in the line).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(DateTime<Utc>, Option<f64>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chart {
    pub title: String,
    pub unit: Unit,
    pub series: Vec<Series>,
    /// A line under the title (e.g. that only some nodes are drawn).
    pub note: Option<String>,
}

/// Where a value at a time lands on the picture.
#[derive(Debug, Clone, Copy)]
struct Frame {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    top: f64,
}

impl Frame {
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let span = (self.end - self.start).num_milliseconds().max(1) as f64;
        let off = (t - self.start).num_milliseconds() as f64;
        PLOT_LEFT + (off / span).clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn y(&self, v: f64) -> f64 {
        let share = if self.top > 0.0 { v / self.top } else { 0.0 };
        PLOT_BOTTOM - share.clamp(0.0, 1.0) * (PLOT_BOTTOM - PLOT_TOP)
    }
}

/// The chart as an SVG document, its time axis ending at `now` and going back at most
/// `window` (at least a minute), to the oldest point. With no value to draw it says "no data
/// yet".
pub(crate) fn render(chart: &Chart, now: DateTime<Utc>, window: Span) -> String {
    let earliest = now - window;
    let visible = |t: &DateTime<Utc>| *t >= earliest && *t <= now;
    let values: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|(t, _)| visible(t))
        .filter_map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .collect();
    let oldest = chart
        .series
        .iter()
        .flat_map(|s| &s.points)
        .map(|(t, _)| *t)
        .filter(visible)
        .min()
        .unwrap_or(now);
    let start = oldest.min(now - Span::seconds(MIN_SPAN));
    let most = values.iter().copied().fold(0.0, f64::max);
    let (top, step) = value_axis(chart.unit, most);
    let frame = Frame {
        start,
        end: now,
        top,
    };

    let mut out = String::new();
    let title = escape(&chart.title);
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" font-family="system-ui, sans-serif" font-size="11" fill="#444">"##
    );
    let _ = write!(
        out,
        r##"<title>{title}</title><rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>"##
    );
    let _ = write!(
        out,
        r##"<text class="title" x="{PLOT_LEFT}" y="18" font-size="13" font-weight="600" fill="#1d1d1b">{title}</text>"##
    );
    if let Some(note) = &chart.note {
        let _ = write!(
            out,
            r##"<text class="note" x="{PLOT_RIGHT}" y="18" text-anchor="end" fill="#6b6b66">{}</text>"##,
            escape(note)
        );
    }
    // The value axis: grid lines with their labels.
    let mut v = 0.0;
    while v <= top + step / 1e6 {
        let y = frame.y(v);
        let _ = write!(
            out,
            r##"<line class="grid" x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#ececec"/><text class="value" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            PLOT_LEFT - 6.0,
            y + 4.0,
            escape(&value_label(chart.unit, v))
        );
        v += step;
    }
    // The time axis: ticks at round times, labelled in UTC.
    let (first, every) = time_ticks(start, now);
    let mut t = first;
    while t <= now {
        let x = frame.x(t);
        let format = if every < 60 { "%H:%M:%S" } else { "%H:%M" };
        let _ = write!(
            out,
            r##"<line class="grid" x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{PLOT_BOTTOM}" stroke="#ececec"/><text class="time" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            PLOT_BOTTOM + 15.0,
            t.format(format)
        );
        t += Span::seconds(every);
    }
    let _ = write!(
        out,
        r##"<text x="{PLOT_RIGHT}" y="{:.1}" text-anchor="end" fill="#6b6b66">UTC</text>"##,
        PLOT_BOTTOM + 30.0
    );
    let _ = write!(
        out,
        r##"<path class="axes" d="M{PLOT_LEFT} {PLOT_TOP}V{PLOT_BOTTOM}H{PLOT_RIGHT}" fill="none" stroke="#999"/>"##
    );

    if values.is_empty() {
        let _ = write!(
            out,
            r##"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14" fill="#888">no data yet</text>"##,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        );
    } else {
        for s in &chart.series {
            series(&mut out, s, &frame, &visible);
        }
    }
    legend(&mut out, chart, &visible);
    out.push_str("</svg>");
    out
}

/// A series' group: one polyline per run of consecutive values (a dot for a lone value).
fn series(out: &mut String, s: &Series, frame: &Frame, visible: &impl Fn(&DateTime<Utc>) -> bool) {
    let name = escape(&s.name);
    let _ = write!(
        out,
        r##"<g class="series" data-series="{name}" stroke="{}" fill="none" stroke-width="1.8" stroke-linejoin="round">"##,
        s.color
    );
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut flush = |run: &mut Vec<(f64, f64)>| {
        match run.as_slice() {
            [] => {}
            [(x, y)] => {
                let _ = write!(
                    out,
                    r##"<circle cx="{x:.1}" cy="{y:.1}" r="2" fill="{}" stroke="none"/>"##,
                    s.color
                );
            }
            points => {
                let points: Vec<String> = points
                    .iter()
                    .map(|(x, y)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = write!(out, r##"<polyline points="{}"/>"##, points.join(" "));
            }
        }
        run.clear();
    };
    for (t, v) in s.points.iter().filter(|(t, _)| visible(t)) {
        match v.filter(|v| v.is_finite()) {
            Some(v) => run.push((frame.x(*t), frame.y(v))),
            None => flush(&mut run),
        }
    }
    flush(&mut run);
    out.push_str("</g>");
}

/// The legend, right of the plot: a swatch and the name of each series, with its latest
/// value.
fn legend(out: &mut String, chart: &Chart, visible: &impl Fn(&DateTime<Utc>) -> bool) {
    out.push_str(r#"<g class="legend">"#);
    for (i, s) in chart.series.iter().enumerate() {
        let y = PLOT_TOP + i as f64 * LEGEND_LINE;
        let latest = s
            .points
            .iter()
            .rev()
            .filter(|(t, _)| visible(t))
            .find_map(|(_, v)| *v)
            .map(|v| format!(" {}", value_label(chart.unit, v)))
            .unwrap_or_default();
        let _ = write!(
            out,
            r##"<rect x="{LEGEND_LEFT}" y="{y:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}{}</text>"##,
            s.color,
            LEGEND_LEFT + 14.0,
            y + 9.0,
            escape(&s.name),
            escape(&latest)
        );
    }
    out.push_str("</g>");
}

/// The top of the value axis and the step between its lines, for values up to `most`: four
/// or five lines at round values.
fn value_axis(unit: Unit, most: f64) -> (f64, f64) {
    if unit == Unit::Percent && most <= 100.0 {
        return (100.0, 25.0);
    }
    let (least, scale) = match unit {
        Unit::Count | Unit::PerSecond | Unit::Percent => (1.0, 1.0),
        Unit::Bytes => (1024.0, byte_scale(most).0),
    };
    let most = most.max(least);
    let mut step = nice_step(most / scale / 4.0) * scale;
    if unit == Unit::Count {
        step = step.max(1.0);
    }
    ((most / step).ceil() * step, step)
}

/// The least of 1, 2, 2.5 or 5 times a power of ten that is at least `rough`.
fn nice_step(rough: f64) -> f64 {
    if rough <= 0.0 || !rough.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// The binary unit to label bytes in, for values up to `most`.
fn byte_scale(most: f64) -> (f64, &'static str) {
    let mut scale = (1024.0, "KiB");
    for next in [
        (1024.0 * 1024.0, "MiB"),
        (1024.0 * 1024.0 * 1024.0, "GiB"),
        (1024.0f64.powi(4), "TiB"),
    ] {
        if most >= next.0 {
            scale = next;
        }
    }
    scale
}

/// A value as the axis and the legend write it.
pub(crate) fn value_label(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Count => format!("{v:.0}"),
        Unit::PerSecond => format!("{}/s", short_number(v)),
        Unit::Percent => format!("{v:.0}%"),
        Unit::Bytes if v == 0.0 => "0 B".to_string(),
        Unit::Bytes => {
            let (scale, name) = byte_scale(v);
            format!("{} {name}", short_number(v / scale))
        }
    }
}

/// At most two decimals, without trailing zeros: `2.5`, `0.25`, `3`.
fn short_number(v: f64) -> String {
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// The first tick of the time axis (a round time) and the seconds between ticks: at most
/// six ticks over the span.
fn time_ticks(start: DateTime<Utc>, end: DateTime<Utc>) -> (DateTime<Utc>, i64) {
    let span = (end - start).num_seconds().max(1);
    let every = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]
        .into_iter()
        .find(|e| span / e <= 6)
        .unwrap_or(3600);
    let secs = start.timestamp();
    let first = secs + (every - secs.rem_euclid(every)) % every;
    (DateTime::from_timestamp(first, 0).unwrap_or(start), every)
}

/// Text as SVG (XML) content or attribute value.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[path = "svg_tests.rs"]
mod tests;
