//! [`render_svg`]: a [`MemoryTrace`] as one self-contained SVG: a title, a timeline (one lane per upload slot
//! and one for compute, each span a rectangle with a tooltip), a memory chart on the same time axis (GPU bytes
//! in use, GPU peak, host RSS, the budget dashed) and a legend. Spans narrower than a pixel are merged, labels
//! drawn only where they fit, and the memory lines thinned to a few points per pixel, so that a trace of many
//! thousands of spans stays small and readable.

use omex::format::metadata::human_bytes;
use omex::memory::trace::{MemorySample, MemoryTrace, SpanKind, TraceSpan};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 24.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const TIMELINE_TOP: f64 = 78.0;
const LANE_H: f64 = 24.0;
const BAR_H: f64 = 18.0;
const MEM_H: f64 = 220.0;
/// Approximate width of one character of the 10px labels.
const CHAR_W: f64 = 6.0;

const STYLE: &str = "text{font-family:sans-serif;font-size:11px;fill:#222}\
.title{font-size:16px;font-weight:bold}.sub{fill:#555}.small{font-size:10px}\
.grid{stroke:#ddd;stroke-width:1}.axis{stroke:#444;stroke-width:1}.fwd{stroke:#bbb;stroke-width:0.5}\
.upload{fill:#4e79a7}.compute{fill:#f28e2b}.resident{fill:#f7c58f}.merged{opacity:0.75}\
.lbl{font-size:10px;fill:#fff;pointer-events:none}.lbl.dark{fill:#222}\
.gpu{fill:none;stroke:#59a14f;stroke-width:1.5}.peak{fill:none;stroke:#e15759;stroke-width:1}\
.rss{fill:none;stroke:#b07aa1;stroke-width:1.5}.budget{stroke:#222;stroke-width:1.2;stroke-dasharray:6 4}";

/// Text safe inside XML content and attribute values (control characters XML forbids become '?').
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A round step giving about `count` ticks over `range`.
fn nice_step(range: f64, count: f64) -> f64 {
    let raw = (range / count).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// `v` with as many decimals as a tick step of `step` needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 4.0) as usize;
    format!("{v:.decimals$}")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn line(s: &mut String, class: &str, (x1, y1): (f64, f64), (x2, y2): (f64, f64)) {
    let _ = write!(s, "<line class=\"{class}\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\"/>");
}

/// `<text>` at `(x, y)`, `anchor` "start", "middle" or "end"; `content` is escaped already.
fn text(s: &mut String, class: &str, (x, y): (f64, f64), anchor: &str, content: &str) {
    let _ = write!(s, "<text class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{content}</text>");
}

/// The time axis: microseconds to x pixels.
struct Scale {
    t0: f64,
    t1: f64,
}

impl Scale {
    fn x(&self, t_us: f64) -> f64 {
        LEFT + (t_us - self.t0) / (self.t1 - self.t0) * PLOT_W
    }
}

/// Draws `trace` as a self-contained SVG document.
pub fn render_svg(trace: &MemoryTrace) -> String {
    let times = trace.spans.iter().flat_map(|s| [s.start_us, s.end_us]).chain(trace.memory.iter().map(|m| m.t_us));
    let times: Vec<f64> = times.filter(|t| t.is_finite()).collect();
    let t0 = times.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let t1 = times.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(t0 + 1.0);
    let scale = Scale { t0, t1 };

    let max_slot = trace.spans.iter().filter(|s| s.kind == SpanKind::Upload).map(|s| s.slot.unwrap_or(0) + 1).max();
    let upload_lanes = trace.slots.max(max_slot.unwrap_or(0));
    let lanes = upload_lanes + 1;
    let timeline_bottom = TIMELINE_TOP + lanes as f64 * LANE_H;
    let mem_top = timeline_bottom + 56.0;
    let mem_bottom = mem_top + MEM_H;
    let legend_y = mem_bottom + 44.0;
    let height = legend_y + 24.0;

    let mut s = String::with_capacity(256 + 400 * trace.spans.len());
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\">\n<style>{STYLE}</style>\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#fff\"/>\n"
    );
    title(&mut s, trace, t1 - t0);
    time_grid(&mut s, &scale, TIMELINE_TOP - 6.0, timeline_bottom, mem_top, mem_bottom);
    timeline(&mut s, trace, &scale, upload_lanes);
    memory_chart(&mut s, trace, &scale, mem_top, mem_bottom);
    legend(&mut s, legend_y);
    s.push_str("</svg>\n");
    s
}

fn title(s: &mut String, trace: &MemoryTrace, duration_us: f64) {
    let budget = trace.budget_bytes.map_or("no budget".to_string(), |b| format!("budget {}", human_bytes(b)));
    let overlap = if trace.overlap { "on" } else { "off" };
    let plural = if trace.slots == 1 { "" } else { "s" };
    let all =
        format!("{} on {} · {budget} · overlap {overlap} · {} slot{plural}", trace.model, trace.device, trace.slots);
    // A long model path keeps its end (the model's name), the whole line in the tooltip.
    let model: Vec<char> = trace.model.chars().collect();
    let model = if model.len() > 48 {
        format!("…{}", model[model.len() - 47..].iter().collect::<String>())
    } else {
        trace.model.clone()
    };
    let _ = writeln!(
        s,
        "<text class=\"title\" x=\"{LEFT}\" y=\"24\"><title>{}</title>{} on {} · {budget} · overlap {overlap} · {} \
         slot{plural}</text>",
        esc(&all),
        esc(&model),
        esc(&trace.device),
        trace.slots,
    );
    let forwards = trace.spans.iter().map(|s| s.forward).collect::<std::collections::BTreeSet<_>>().len();
    let (mut up_bytes, mut up_us) = (0u64, 0f64);
    for sp in trace.spans.iter().filter(|s| s.kind == SpanKind::Upload) {
        up_bytes += sp.bytes;
        up_us += (sp.end_us - sp.start_us).max(0.0);
    }
    let resident = trace.units.iter().filter(|u| u.resident).count();
    let peak_gpu = trace.memory.iter().map(|m| m.gpu_peak_bytes.max(m.gpu_bytes)).max().unwrap_or(0);
    let peak_rss = trace.memory.iter().map(|m| m.host_rss_bytes).max().unwrap_or(0);
    let rate = if up_us > 0.0 { format!(" at {:.2} GB/s", up_bytes as f64 / up_us / 1e3) } else { String::new() };
    let _ = writeln!(
        s,
        "<text class=\"sub\" x=\"{LEFT}\" y=\"44\">{} units ({resident} resident) · {forwards} forward{} in \
         {:.1} ms · {} spans · uploaded {}{rate} · peak GPU {} · peak host RSS {}</text>",
        trace.units.len(),
        if forwards == 1 { "" } else { "s" },
        duration_us / 1e3,
        trace.spans.len(),
        human_bytes(up_bytes),
        human_bytes(peak_gpu),
        human_bytes(peak_rss)
    );
}

/// Vertical grid lines with the time labels under the timeline and under the memory chart.
fn time_grid(s: &mut String, scale: &Scale, top: f64, timeline_bottom: f64, mem_top: f64, mem_bottom: f64) {
    let range_ms = (scale.t1 - scale.t0) / 1e3;
    let step = nice_step(range_ms, 10.0);
    let first = (scale.t0 / 1e3 / step).ceil() as i64;
    let last = (scale.t1 / 1e3 / step).floor() as i64;
    for i in first..=last {
        let ms = i as f64 * step;
        let x = scale.x(ms * 1e3);
        let label = tick_label(ms, step);
        for (y1, y2) in [(top, timeline_bottom), (mem_top, mem_bottom)] {
            line(s, "grid", (x, y1), (x, y2));
            text(s, "small", (x, y2 + 14.0), "middle", &label);
        }
        s.push('\n');
    }
    for y in [timeline_bottom + 28.0, mem_bottom + 28.0] {
        text(s, "small sub", (LEFT + PLOT_W / 2.0, y), "middle", "time (ms)");
    }
}

/// One rectangle to draw: a span, or a run of spans too narrow to tell apart.
struct Bar<'a> {
    first: &'a TraceSpan,
    last: &'a TraceSpan,
    count: usize,
    start: f64,
    end: f64,
    bytes: u64,
}

fn timeline(s: &mut String, trace: &MemoryTrace, scale: &Scale, upload_lanes: usize) {
    let resident: HashMap<&str, bool> = trace.units.iter().map(|u| (u.name.as_str(), u.resident)).collect();
    let mut lanes: Vec<Vec<&TraceSpan>> = vec![Vec::new(); upload_lanes + 1];
    for sp in &trace.spans {
        let lane = match sp.kind {
            SpanKind::Upload => sp.slot.unwrap_or(0),
            SpanKind::Compute => upload_lanes,
        };
        lanes[lane].push(sp);
    }
    // Faint lines where each forward's compute begins, when they are far enough apart to help.
    let mut fwd_start: BTreeMap<u64, f64> = BTreeMap::new();
    for sp in lanes[upload_lanes].iter() {
        let e = fwd_start.entry(sp.forward).or_insert(sp.start_us);
        *e = e.min(sp.start_us);
    }
    if fwd_start.len() > 1 && (fwd_start.len() as f64) < PLOT_W / 6.0 {
        let bottom = TIMELINE_TOP + (upload_lanes + 1) as f64 * LANE_H;
        for t in fwd_start.values() {
            line(s, "fwd", (scale.x(*t), TIMELINE_TOP), (scale.x(*t), bottom));
        }
    }
    for (i, lane) in lanes.iter_mut().enumerate() {
        let y = TIMELINE_TOP + i as f64 * LANE_H;
        let name = if i == upload_lanes { "compute".to_string() } else { format!("upload slot {i}") };
        text(s, "", (LEFT - 8.0, y + BAR_H / 2.0 + 4.0), "end", &name);
        line(s, "axis", (LEFT, y + BAR_H + 0.5), (LEFT + PLOT_W, y + BAR_H + 0.5));
        s.push('\n');
        lane.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
        for bar in merge(lane, scale, &resident) {
            draw_bar(s, &bar, scale, y, &resident);
        }
    }
}

/// The CSS classes of a span's rectangle: its kind, and for compute whether the unit is resident.
fn class_of(sp: &TraceSpan, resident: &HashMap<&str, bool>) -> &'static str {
    match sp.kind {
        SpanKind::Upload => "upload",
        SpanKind::Compute if resident.get(sp.unit.as_str()).copied().unwrap_or(false) => "compute resident",
        SpanKind::Compute => "compute",
    }
}

/// Spans in start order, runs of sub-pixel spans of one class that touch (within a pixel) merged into one bar.
fn merge<'a>(lane: &[&'a TraceSpan], scale: &Scale, resident: &HashMap<&str, bool>) -> Vec<Bar<'a>> {
    let px = (scale.t1 - scale.t0) / PLOT_W;
    let mut bars: Vec<Bar<'a>> = Vec::new();
    for &sp in lane {
        let narrow = sp.end_us - sp.start_us < px;
        if let Some(b) = bars.last_mut() {
            let b_narrow = (b.end - b.start) < px || b.count > 1;
            let same = class_of(sp, resident) == class_of(b.first, resident);
            if narrow && b_narrow && same && sp.start_us - b.end < px {
                b.last = sp;
                b.count += 1;
                b.end = b.end.max(sp.end_us);
                b.bytes += sp.bytes;
                continue;
            }
        }
        bars.push(Bar { first: sp, last: sp, count: 1, start: sp.start_us, end: sp.end_us, bytes: sp.bytes });
    }
    bars
}

fn draw_bar(s: &mut String, bar: &Bar, scale: &Scale, y: f64, resident: &HashMap<&str, bool>) {
    let x = scale.x(bar.start);
    let w = (scale.x(bar.end) - x).max(0.6);
    let sp = bar.first;
    let class = class_of(sp, resident);
    let dur_ms = (bar.end - bar.start) / 1e3;
    let what = match sp.kind {
        SpanKind::Upload => "upload",
        SpanKind::Compute => "compute",
    };
    let tip = if bar.count == 1 {
        let slot = sp.slot.map_or(String::new(), |k| format!(", slot {k}"));
        let rate = match sp.kind {
            SpanKind::Upload if dur_ms > 0.0 => format!(", {:.2} GB/s", sp.bytes as f64 / dur_ms / 1e6),
            _ => String::new(),
        };
        format!(
            "{}: {what}{slot}, forward {}\n{:.3}–{:.3} ms ({dur_ms:.3} ms), {}{rate}",
            sp.unit,
            sp.forward,
            bar.start / 1e3,
            bar.end / 1e3,
            human_bytes(sp.bytes)
        )
    } else {
        format!(
            "{} {what} spans: {} (forward {}) … {} (forward {})\n{:.3}–{:.3} ms, {}",
            bar.count,
            sp.unit,
            sp.forward,
            bar.last.unit,
            bar.last.forward,
            bar.start / 1e3,
            bar.end / 1e3,
            human_bytes(bar.bytes)
        )
    };
    let merged = if bar.count > 1 { " merged" } else { "" };
    let tip = esc(&tip);
    let _ = write!(
        s,
        "<rect class=\"span {class}{merged}\" x=\"{x:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{BAR_H}\">\
         <title>{tip}</title></rect>"
    );
    let label = if bar.count == 1 { sp.unit.clone() } else { format!("{}×", bar.count) };
    if w >= label.chars().count() as f64 * CHAR_W + 6.0 {
        let class = if class == "compute resident" { "lbl dark" } else { "lbl" };
        text(s, class, (x + 3.0, y + BAR_H / 2.0 + 3.5), "start", &esc(&label));
    }
    s.push('\n');
}

/// A step line through `(t_us, value)` points, thinned to the first, lowest, highest and last point of each
/// pixel column.
fn step_line(points: impl Iterator<Item = (f64, f64)>, scale: &Scale, y_of: impl Fn(f64) -> f64) -> String {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut column: Option<(i64, Vec<f64>)> = None;
    let flush = |col: &(i64, Vec<f64>), out: &mut Vec<(f64, f64)>| {
        let x = col.0 as f64;
        let v = &col.1;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for y in [v[0], lo, hi, v[v.len() - 1]] {
            if let Some(&(px, py)) = out.last() {
                if px != x && py != y {
                    out.push((x, py)); // the step: hold the previous value until this column
                }
            }
            if out.last() != Some(&(x, y)) {
                out.push((x, y));
            }
        }
    };
    for (t, v) in points {
        let col = (scale.x(t) * 2.0).round() as i64; // half-pixel columns
        let y = (y_of(v) * 10.0).round() / 10.0;
        match column.as_mut() {
            Some(c) if c.0 == col => c.1.push(y),
            _ => {
                if let Some(c) = column.take() {
                    flush(&c, &mut out);
                }
                column = Some((col, vec![y]));
            }
        }
    }
    if let Some(c) = column.take() {
        flush(&c, &mut out);
    }
    out.iter().map(|(x, y)| format!("{:.1},{y:.1}", x / 2.0)).collect::<Vec<_>>().join(" ")
}

fn memory_chart(s: &mut String, trace: &MemoryTrace, scale: &Scale, top: f64, bottom: f64) {
    let samples: &[MemorySample] = &trace.memory;
    let max = samples
        .iter()
        .map(|m| m.gpu_bytes.max(m.gpu_peak_bytes).max(m.host_rss_bytes))
        .chain(trace.budget_bytes)
        .max()
        .unwrap_or(0);
    let y_max = (mb(max) * 1.1).max(1.0);
    let y_of = |v_mb: f64| bottom - v_mb / y_max * (bottom - top);
    let step = nice_step(y_max, 5.0);
    let mut i = 0;
    while i as f64 * step <= y_max {
        let v = i as f64 * step;
        let y = y_of(v);
        line(s, "grid", (LEFT, y), (LEFT + PLOT_W, y));
        text(s, "small", (LEFT - 8.0, y + 3.5), "end", &format!("{} MB", tick_label(v, step)));
        s.push('\n');
        i += 1;
    }
    text(s, "", (LEFT, top - 8.0), "start", "memory");
    line(s, "axis", (LEFT, top), (LEFT, bottom));
    line(s, "axis", (LEFT, bottom), (LEFT + PLOT_W, bottom));
    if samples.is_empty() {
        text(s, "sub", (LEFT + PLOT_W / 2.0, (top + bottom) / 2.0), "middle", "no memory samples recorded");
    }
    s.push('\n');
    type Series = (&'static str, &'static str, fn(&MemorySample) -> u64);
    let series: [Series; 3] = [
        ("peak", "GPU peak", |m| m.gpu_peak_bytes),
        ("rss", "host RSS", |m| m.host_rss_bytes),
        ("gpu", "GPU in use", |m| m.gpu_bytes),
    ];
    for (class, name, get) in series {
        if samples.is_empty() || (class == "rss" && samples.iter().all(|m| m.host_rss_bytes == 0)) {
            continue;
        }
        let points = step_line(samples.iter().map(|m| (m.t_us, mb(get(m)))), scale, y_of);
        let peak = samples.iter().map(get).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "<polyline class=\"{class}\" points=\"{points}\"><title>{name}: up to {}</title></polyline>",
            human_bytes(peak)
        );
    }
    if let Some(b) = trace.budget_bytes {
        let y = y_of(mb(b));
        line(s, "budget", (LEFT, y), (LEFT + PLOT_W, y));
        text(s, "small", (LEFT + PLOT_W - 4.0, y - 4.0), "end", &format!("budget {}", human_bytes(b)));
        s.push('\n');
    }
}

fn legend(s: &mut String, y: f64) {
    let mut x = LEFT;
    let boxes = [
        ("upload", "upload into a slot"),
        ("compute", "compute (streamed unit)"),
        ("resident", "compute (resident unit)"),
    ];
    for (class, name) in boxes {
        let _ = write!(s, "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\"/>", y - 9.0);
        text(s, "", (x + 19.0, y), "start", name);
        x += 19.0 + name.len() as f64 * CHAR_W + 22.0;
    }
    for (class, name) in [("gpu", "GPU in use"), ("peak", "GPU peak"), ("rss", "host RSS"), ("budget", "GPU budget")] {
        line(s, class, (x, y - 4.0), (x + 22.0, y - 4.0));
        text(s, "", (x + 27.0, y), "start", name);
        x += 27.0 + name.len() as f64 * CHAR_W + 22.0;
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use omex::memory::trace::TraceUnit;

    fn unit(name: &str, mb: u64, resident: bool) -> TraceUnit {
        TraceUnit { name: name.into(), bytes: mb << 20, resident }
    }

    /// `forwards` forward passes over `units`: the resident one computed in place, each streamed one uploaded
    /// into slot `i % 2` (overlapping the previous unit's compute) and then computed.
    fn synthetic(units: &[TraceUnit], forwards: u64, us_per_unit: f64) -> MemoryTrace {
        let mut spans = Vec::new();
        let mut memory = Vec::new();
        let mut t = 0.0;
        for f in 0..forwards {
            for (i, u) in units.iter().enumerate() {
                let slot = (!u.resident).then_some(i % 2);
                if !u.resident {
                    let s = TraceSpan {
                        kind: SpanKind::Upload,
                        unit: u.name.clone(),
                        slot,
                        forward: f,
                        start_us: t,
                        end_us: t + 0.8 * us_per_unit,
                        bytes: u.bytes,
                    };
                    spans.push(s);
                }
                let (start, end) = (t + 0.8 * us_per_unit, t + 1.8 * us_per_unit);
                spans.push(TraceSpan {
                    kind: SpanKind::Compute,
                    unit: u.name.clone(),
                    slot,
                    forward: f,
                    start_us: start,
                    end_us: end,
                    bytes: u.bytes,
                });
                let gpu = (100 + 10 * (i as u64 % 3)) << 20;
                memory.push(MemorySample {
                    t_us: end,
                    gpu_bytes: gpu,
                    gpu_peak_bytes: 120 << 20,
                    host_rss_bytes: 300 << 20,
                });
                t = end;
            }
        }
        MemoryTrace {
            model: "tiny & <odd>".into(),
            device: "llvmpipe (Vulkan)".into(),
            budget_bytes: Some(128 << 20),
            overlap: true,
            slots: 2,
            units: units.to_vec(),
            spans,
            memory,
        }
    }

    /// Well-formedness: tags balance under one root, and every `&` starts an entity.
    fn check_xml(s: &str) -> Result<(), String> {
        fn text(t: &str) -> Result<(), String> {
            for (i, _) in t.match_indices('&') {
                let ok = ["amp;", "lt;", "gt;", "quot;", "apos;"].iter().any(|e| t[i + 1..].starts_with(e));
                if !ok {
                    return Err(format!("a bare & in {:?}", &t[i..(i + 20).min(t.len())]));
                }
            }
            Ok(())
        }
        let (mut stack, mut roots, mut rest) = (Vec::<String>::new(), 0, s);
        while let Some(i) = rest.find('<') {
            text(&rest[..i])?;
            let end = i + rest[i..].find('>').ok_or("a tag is not closed")?;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') {
                continue;
            }
            if tag.contains('<') {
                return Err(format!("a < inside the tag {tag:?}"));
            }
            text(tag)?;
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("").to_string();
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        text(rest)?;
        if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
            return Err(format!("unclosed {stack:?}, {roots} roots"));
        }
        Ok(())
    }

    #[test]
    fn a_small_trace_draws_every_span_with_escaped_names() {
        let units = [unit("embedding", 40, true), unit("a<b&c", 20, false), unit("layer_1", 20, false)];
        let trace = synthetic(&units, 3, 2000.0);
        let svg = render_svg(&trace);
        check_xml(&svg).unwrap();
        assert_eq!(svg.matches("class=\"span ").count(), trace.spans.len(), "one rectangle per span");
        assert_eq!(svg.matches("class=\"span upload").count(), 6);
        assert_eq!(svg.matches("class=\"span compute resident").count(), 3);
        assert!(svg.contains("a&lt;b&amp;c") && !svg.contains("a<b"), "names are escaped");
        assert!(svg.contains("tiny &amp; &lt;odd&gt;"));
        for needle in
            ["upload slot 0", "upload slot 1", "compute", "budget 134 MB", "overlap on", "MB</text>", "layer_1</text>"]
        {
            assert!(svg.contains(needle), "{needle}");
        }
        check_xml("<a><b></a></b>").unwrap_err();
        check_xml("<a>x & y</a>").unwrap_err();
    }

    #[test]
    fn thousands_of_spans_stay_small_and_well_formed() {
        let units: Vec<TraceUnit> = (0..30).map(|i| unit(&format!("layer_{i}"), 50, i < 2)).collect();
        let trace = synthetic(&units, 64, 150.0);
        assert!(trace.spans.len() > 3000);
        let svg = render_svg(&trace);
        check_xml(&svg).unwrap();
        let rects = svg.matches("class=\"span ").count();
        assert!(rects < trace.spans.len(), "sub-pixel spans are merged: {rects} rectangles");
        assert!(svg.contains(" merged\""));
        assert!(svg.len() < 2_000_000, "{} bytes", svg.len());
    }

    #[test]
    fn empty_traces_render() {
        let mut trace = synthetic(&[], 0, 1.0);
        trace.budget_bytes = None;
        trace.slots = 0;
        let svg = render_svg(&trace);
        check_xml(&svg).unwrap();
        assert!(svg.contains("no memory samples") && svg.contains("no budget"));
    }
}
