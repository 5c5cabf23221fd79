//! The `--svg` picture of `blocks-compare`: one panel per run, one lane per worker, one bar per
//! task, on a shared time axis in milliseconds.
//!
//! The SVG is written by hand: a few `format!` strings, no dependency.

use std::fmt::Write as _;

use crate::blocks::{join, micros, ms};
use crate::compare::RunReport;
use crate::options::Options;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 140.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const PANEL_HEADER: f64 = 26.0;
const LANE: f64 = 26.0;
const BAR: f64 = 18.0;
const AXIS: f64 = 42.0;
const PANEL_GAP: f64 = 24.0;
const GREY_MIDDLE: &str = r##" text-anchor="middle" fill="#444444""##;

/// Draws `runs` one above the other, on one time scale so the panels compare at a glance.
///
/// Each panel has a lane per worker, labelled with the worker's name, and a bar per task from
/// its start to its end, labelled with the task number and coloured by it (task 3 has the same
/// colour in every panel). Hovering a bar shows its task, worker and times. The title gives the
/// run's parameters, each panel header its wall time, the span of its tasks and the most tasks
/// that ran at once.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use blocks_demo::{Options, Outcome, compare::RunReport, timeline::render_svg};
///
/// let outcome = Outcome {
///     task: 0, worker: "Thread-1".into(), start_us: 0, end_us: 100_000, result: 0, pid: 1,
/// };
/// let (backend, wall) = ("thread".into(), Duration::from_millis(105));
/// let run = RunReport { backend, wall, outcomes: vec![outcome], ..RunReport::default() };
/// let svg = render_svg(&Options::default(), &[&run]);
/// assert!(svg.starts_with("<svg") && svg.contains(">Thread-1</text>"));
/// ```
pub fn render_svg(options: &Options, runs: &[&RunReport]) -> String {
    let axis = Axis::new(runs.iter().map(|run| run.span_us()).max().unwrap_or(0));
    let mut body = String::new();
    let mut y = TOP;
    for run in runs {
        y = draw_panel(&mut body, run, &axis, y) + PANEL_GAP;
    }
    let height = y - PANEL_GAP + 16.0;
    let wall_of = |run: &&RunReport| format!("{} {} ms", run.backend, ms(micros(run.wall)));
    let walls = join(runs.iter().map(wall_of));
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>
"##
    );
    let title = r#" font-size="17" font-weight="bold" text-anchor="middle""#;
    text(&mut svg, WIDTH / 2.0, 26.0, title, &options.to_string());
    let wall = format!("wall time: {walls}");
    text(&mut svg, WIDTH / 2.0, 46.0, GREY_MIDDLE, &wall);
    svg + &body + "</svg>\n"
}

/// Appends a `<text>` element at `x`, `y` with more attributes `attrs` and escaped `content`.
fn text(svg: &mut String, x: f64, y: f64, attrs: &str, content: &str) {
    let content = escape(content);
    let _ = writeln!(svg, r#"<text x="{x}" y="{y}"{attrs}>{content}</text>"#);
}

/// Draws one run from `top` down; returns the y just below its axis.
fn draw_panel(svg: &mut String, run: &RunReport, axis: &Axis, top: f64) -> f64 {
    let plot_width = WIDTH - LEFT - RIGHT;
    let (wall, span) = (ms(micros(run.wall)), ms(run.span_us()));
    let (backend, workers, most) = (&run.backend, run.workers(), run.max_concurrency());
    let mut header = format!(
        "{backend} pool: wall {wall} ms, tasks span {span} ms, {} workers, at most {most} at once",
        workers.len()
    );
    if let Some(failure) = &run.failure {
        let _ = write!(header, " (failed: {failure})");
    }
    let failed = run.failure.is_some();
    let color = if failed { "#b00020" } else { "#000000" };
    let bold = format!(r#" font-size="14" font-weight="bold" fill="{color}""#);
    text(svg, LEFT, top + 16.0, &bold, &header);
    let lanes_top = top + PANEL_HEADER;
    let x_of = |us: u64| LEFT + plot_width * us as f64 / axis.end_us as f64;

    // Lanes with their labels, striped so a bar's lane is easy to follow. Process workers are
    // named by their pid: say so, as the process demo's log lines do.
    let lane_prefix = if run.backend == "process" { "PID " } else { "" };
    for (i, worker) in workers.iter().enumerate() {
        let y = lanes_top + LANE * i as f64;
        let fill = if i % 2 == 0 { "#f3f3f3" } else { "#fafafa" };
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{y}" width="{plot_width}" height="{LANE}" fill="{fill}"/>"#
        );
        let (end, label) = (r#" text-anchor="end""#, format!("{lane_prefix}{worker}"));
        text(svg, LEFT - 8.0, y + LANE / 2.0 + 4.0, end, &label);
    }
    if workers.is_empty() {
        let (y, grey) = (lanes_top + LANE / 2.0 + 4.0, r##" fill="#666666""##);
        text(svg, LEFT + 8.0, y, grey, "no tasks ran");
    }

    // Grid lines and the axis below the lanes.
    let axis_y = lanes_top + LANE * workers.len().max(1) as f64;
    for tick_us in axis.ticks() {
        let (x, label) = (x_of(tick_us), axis.label(tick_us));
        let (tick_end, label_y) = (axis_y + 5.0, axis_y + 18.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{lanes_top}" x2="{x:.1}" y2="{axis_y}" stroke="#dddddd"/>
<line x1="{x:.1}" y1="{axis_y}" x2="{x:.1}" y2="{tick_end}" stroke="#333333"/>
<text x="{x:.1}" y="{label_y}" text-anchor="middle">{label}</text>"##
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#333333"/>"##,
        LEFT + plot_width
    );
    let (x, axis_label) = (LEFT + plot_width / 2.0, "time since the run started (ms)");
    text(svg, x, axis_y + 34.0, GREY_MIDDLE, axis_label);

    // One bar per task, in its worker's lane, coloured by its task number.
    for o in &run.outcomes {
        let lane = workers.iter().position(|w| *w == o.worker);
        let lane = lane.expect("every worker has a lane");
        let y = lanes_top + LANE * lane as f64 + (LANE - BAR) / 2.0;
        let x = x_of(o.start_us);
        let width = (x_of(o.end_us) - x).max(1.0);
        let hue = (o.task as f64 * 137.508) % 360.0;
        let (task, result, worker) = (o.task, o.result, &o.worker);
        let (start, end) = (ms(o.start_us), ms(o.end_us));
        let title = format!("blocks({task}) = {result} on {worker}: {start} to {end} ms");
        let title = escape(&title);
        let (label_x, label_y) = (x + width / 2.0, y + BAR / 2.0 + 4.0);
        let _ = writeln!(
            svg,
            r##"<g class="task"><title>{title}</title>
<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{BAR}" rx="3" fill="hsl({hue:.0}, 65%, 62%)" stroke="#333333" stroke-width="0.8"/>
<text x="{label_x:.1}" y="{label_y:.1}" text-anchor="middle" font-size="11">{task}</text></g>"##
        );
    }
    axis_y + AXIS
}

/// A time axis from 0 to a round number of milliseconds, with round ticks.
#[derive(Debug)]
struct Axis {
    step_us: u64,
    end_us: u64,
}

impl Axis {
    /// An axis that covers `span_us` with about 5 to 10 ticks of 1, 2 or 5 times a power of
    /// ten microseconds.
    fn new(span_us: u64) -> Axis {
        let span_us = span_us.max(1000);
        let raw = span_us.div_ceil(10);
        let magnitude = 10u64.pow(raw.ilog10());
        let steps = [1, 2, 5, 10].map(|m| m * magnitude);
        let step_us = steps.into_iter().find(|&step| step >= raw);
        let step_us = step_us.unwrap_or(10 * magnitude);
        let end_us = span_us.div_ceil(step_us) * step_us;
        Axis { step_us, end_us }
    }

    fn ticks(&self) -> impl Iterator<Item = u64> + '_ {
        (0..=self.end_us / self.step_us).map(|i| i * self.step_us)
    }

    /// A tick's label in ms, with a decimal when the step (at least 0.1 ms) needs one.
    fn label(&self, us: u64) -> String {
        let decimals = usize::from(self.step_us < 1000);
        format!("{:.*}", decimals, us as f64 / 1000.0)
    }
}

/// Escapes text for SVG content and attribute values (`&` first, as the others bring one).
fn escape(text: &str) -> String {
    let entities = [
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ("\"", "&quot;"),
        ("'", "&apos;"),
    ];
    let escape_one = |text: String, (c, entity): &(&str, &str)| text.replace(c, entity);
    entities.iter().fold(text.to_owned(), escape_one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::python_run;

    /// Checks that tags open and close in order, as an XML parser would.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "bad tag {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap());
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed {open:?}");
    }

    #[test]
    fn bars_sit_in_their_lanes_at_their_times() {
        let thread = python_run("thread", ["A", "B", "C"]);
        let svg = render_svg(&Options::default(), &[&thread]);
        // Axis 0..200 ms over 790 px: blocks(0) from 0 ms, 100 ms wide, in lane 0.
        let plot = WIDTH - LEFT - RIGHT;
        let first_bar = format!(
            r#"<rect x="{LEFT:.1}" y="{:.1}" width="{:.1}" height="{BAR}""#,
            TOP + PANEL_HEADER + (LANE - BAR) / 2.0,
            plot * 100_000.0 / 200_000.0
        );
        assert!(svg.contains(&first_bar), "{first_bar} not in {svg}");
    }

    #[test]
    fn a_failed_run_says_so_and_names_are_escaped() {
        let mut empty = python_run("process", ["P1", "P2", "P3"]);
        empty.outcomes.clear();
        empty.failure = Some("exited with code 1 & said <nothing>".to_owned());
        let thread = python_run("thread", ["T<1>", "T&2", "T3"]);
        let svg = render_svg(&Options::default(), &[&thread, &empty]);
        assert_well_formed(&svg);
        assert!(svg.contains(">T&lt;1&gt;</text>"));
        assert!(svg.contains(">T&amp;2</text>"));
        assert!(svg.contains("(failed: exited with code 1 &amp; said &lt;nothing&gt;)</text>"));
        assert!(svg.contains(">no tasks ran</text>"));
    }

    #[test]
    fn axis_steps_are_round() {
        for (span_us, step_us, end_us, ticks) in [
            (201_000, 50_000, 250_000, 6),
            (0, 100, 1000, 11),
            (2_345_678, 500_000, 2_500_000, 6),
        ] {
            let axis = Axis::new(span_us);
            assert_eq!((axis.step_us, axis.end_us), (step_us, end_us), "{span_us}");
            assert_eq!(axis.ticks().count(), ticks);
        }
        assert_eq!(Axis::new(201_000).label(150_000), "150");
        assert_eq!(Axis::new(0).label(300), "0.3");
    }
}
