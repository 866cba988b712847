use chrono::TimeZone;

use super::*;

fn now() -> DateTime<Utc> {
    // 12:00:00 UTC.
    Utc.with_ymd_and_hms(2024, 5, 6, 12, 0, 0).unwrap()
}

fn ago(secs: i64) -> DateTime<Utc> {
    now() - Span::seconds(secs)
}

fn chart(unit: Unit, series: Vec<Series>) -> Chart {
    Chart {
        title: "Tasks by state".into(),
        unit,
        series,
        note: None,
    }
}

fn line(name: &str, points: &[(i64, Option<f64>)]) -> Series {
    Series {
        name: name.into(),
        color: "#2e8b57",
        points: points.iter().map(|(s, v)| (ago(*s), *v)).collect(),
    }
}

fn hour() -> Span {
    Span::seconds(3600)
}

/// The `points` of every polyline in the group of series `name`.
fn polylines(svg: &str, name: &str) -> Vec<String> {
    let start = svg
        .find(&format!("data-series=\"{name}\""))
        .unwrap_or_else(|| panic!("no series {name}: {svg}"));
    let group = &svg[start..start + svg[start..].find("</g>").unwrap()];
    group
        .split("<polyline points=\"")
        .skip(1)
        .map(|p| p[..p.find('"').unwrap()].to_string())
        .collect()
}

#[test]
fn a_known_history_is_drawn_where_it_belongs() {
    // Over the last minute: 0, 2 and 4 tasks. The value axis goes to 4 in steps of 1.
    let svg = render(
        &chart(
            Unit::Count,
            vec![line(
                "running",
                &[(60, Some(0.0)), (30, Some(2.0)), (0, Some(4.0))],
            )],
        ),
        now(),
        hour(),
    );
    // x: 64 (a minute ago) to 470 (now); y: 224 (0) to 34 (4).
    assert_eq!(
        polylines(&svg, "running"),
        ["64.0,224.0 267.0,129.0 470.0,34.0"]
    );
    for label in ["0", "1", "2", "3", "4"] {
        assert!(
            svg.contains(&format!("text-anchor=\"end\">{label}</text>")),
            "{label}: {svg}"
        );
    }
    assert!(!svg.contains(">5</text>"), "{svg}");
    // Ticks every 10 s from 11:59:00, labelled in UTC, and a legend with the latest value.
    for label in ["11:59:00", "11:59:30", "12:00:00"] {
        assert!(svg.contains(&format!(">{label}</text>")), "{label}: {svg}");
    }
    assert!(svg.contains(">UTC</text>"), "{svg}");
    assert!(svg.contains(">running 4</text>"), "{svg}");
    assert!(!svg.contains("no data yet"));
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.ends_with("</svg>"));
    assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
}

#[test]
fn a_missing_value_breaks_the_line_and_a_lone_value_is_a_dot() {
    let svg = render(
        &chart(
            Unit::Count,
            vec![line(
                "pending",
                &[
                    (60, Some(1.0)),
                    (50, Some(1.0)),
                    (40, None),
                    (30, Some(2.0)),
                    (20, None),
                    (10, Some(2.0)),
                    (0, Some(2.0)),
                ],
            )],
        ),
        now(),
        hour(),
    );
    let lines = polylines(&svg, "pending");
    assert_eq!(lines.len(), 2, "{svg}");
    assert_eq!(lines[0].split(' ').count(), 2);
    assert_eq!(lines[1].split(' ').count(), 2);
    // The lone 2 thirty seconds ago: a dot at x 267, y 34 (2 is the top).
    assert!(svg.contains("<circle cx=\"267.0\" cy=\"34.0\""), "{svg}");
}

#[test]
fn the_time_axis_spans_the_history_up_to_an_hour() {
    // Points over two hours: only the last hour is drawn, from its start to now.
    let svg = render(
        &chart(
            Unit::Count,
            vec![line(
                "running",
                &[(7200, Some(9.0)), (3600, Some(1.0)), (0, Some(1.0))],
            )],
        ),
        now(),
        hour(),
    );
    assert_eq!(polylines(&svg, "running"), ["64.0,34.0 470.0,34.0"]);
    // The 9 two hours ago does not stretch the value axis.
    assert!(!svg.contains(">9</text>"), "{svg}");
    for label in ["11:00", "11:10", "11:50", "12:00"] {
        assert!(svg.contains(&format!(">{label}</text>")), "{label}: {svg}");
    }
    // Points in the future (another clock) are left out too.
    let svg = render(
        &chart(Unit::Count, vec![line("running", &[(-60, Some(1.0))])]),
        now(),
        hour(),
    );
    assert!(svg.contains("no data yet"), "{svg}");
}

#[test]
fn an_empty_chart_says_there_is_no_data_yet() {
    for series in [
        vec![],
        vec![line("running", &[])],
        vec![line("running", &[(10, None), (0, None)])],
    ] {
        let svg = render(&chart(Unit::Count, series), now(), hour());
        assert!(svg.contains(">no data yet</text>"), "{svg}");
        assert!(!svg.contains("<polyline"), "{svg}");
        assert!(svg.contains(">Tasks by state</text>"), "{svg}");
    }
}

#[test]
fn text_is_escaped() {
    let evil = "<script>alert('x')</script>&\"";
    let mut c = chart(
        Unit::Percent,
        vec![line(evil, &[(10, Some(50.0)), (0, Some(60.0))])],
    );
    c.title = format!("CPU {evil}");
    c.note = Some(evil.to_string());
    let svg = render(&c, now(), hour());
    assert!(!svg.contains("<script"), "{svg}");
    assert!(!svg.contains("'x'"), "{svg}");
    assert!(
        svg.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"),
        "{svg}"
    );
    // The attribute holding the name cannot be closed by it.
    assert!(svg.contains("data-series=\"&lt;script&gt;"), "{svg}");
    assert_eq!(escape("a<b>&'\"c"), "a&lt;b&gt;&amp;&#39;&quot;c");
}

#[test]
fn value_axes_go_by_round_steps() {
    assert_eq!(value_axis(Unit::Count, 0.0), (1.0, 1.0));
    assert_eq!(value_axis(Unit::Count, 4.0), (4.0, 1.0));
    assert_eq!(value_axis(Unit::Count, 7.0), (8.0, 2.0));
    assert_eq!(value_axis(Unit::Count, 180.0), (200.0, 50.0));
    assert_eq!(value_axis(Unit::PerSecond, 0.3), (1.0, 0.25));
    assert_eq!(value_axis(Unit::PerSecond, 9.0), (10.0, 2.5));
    assert_eq!(value_axis(Unit::Percent, 42.0), (100.0, 25.0));
    assert_eq!(value_axis(Unit::Percent, 130.0), (150.0, 50.0));
    let gib = 1024.0 * 1024.0 * 1024.0;
    assert_eq!(value_axis(Unit::Bytes, 3.0 * gib), (3.0 * gib, gib));
    assert_eq!(value_axis(Unit::Bytes, 1.5 * gib), (1.5 * gib, 0.5 * gib));
    assert_eq!(value_axis(Unit::Bytes, 0.0), (1024.0, 256.0));
    assert_eq!(value_label(Unit::Bytes, 0.5 * gib), "512 MiB");
    assert_eq!(value_label(Unit::Bytes, 1.5 * gib), "1.5 GiB");
    assert_eq!(value_label(Unit::Bytes, 0.0), "0 B");
    assert_eq!(value_label(Unit::PerSecond, 0.25), "0.25/s");
    assert_eq!(value_label(Unit::PerSecond, 2.0), "2/s");
    assert_eq!(value_label(Unit::Percent, 37.4), "37%");
    assert_eq!(value_label(Unit::Count, 12.0), "12");
}

#[test]
fn time_ticks_fall_on_round_times() {
    let (first, every) = time_ticks(now() - Span::seconds(3600), now());
    assert_eq!((first, every), (ago(3600), 600));
    let (first, every) = time_ticks(ago(95), now());
    assert_eq!((first, every), (ago(90), 15));
    let (first, every) = time_ticks(ago(61) + Span::milliseconds(500), now());
    assert_eq!((first, every), (ago(60), 10));
}
