//! BENCHMARKS.md and the latency chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

/// One reported figure.
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The figure, formatted.
    pub value: String,
    /// The target, formatted ("—" when there is none).
    pub target: String,
    /// Met or missed; `None` for context figures without a target.
    pub pass: Option<bool>,
    /// Why a MISS happens and what would fix it, or how to read the figure.
    pub note: String,
}

impl Figure {
    /// A figure with a target.
    pub fn judged(name: &str, value: String, target: &str, pass: bool, note: &str) -> Figure {
        Figure {
            name: name.to_string(),
            value,
            target: target.to_string(),
            pass: Some(pass),
            note: note.to_string(),
        }
    }

    /// A context figure.
    pub fn info(name: &str, value: String, note: &str) -> Figure {
        Figure {
            name: name.to_string(),
            value,
            target: "—".to_string(),
            pass: None,
            note: note.to_string(),
        }
    }
}

/// A section of the report.
pub struct Section {
    /// Heading.
    pub title: String,
    /// How it was measured.
    pub method: String,
    /// Its figures.
    pub figures: Vec<Figure>,
}

/// Facts about the machine the run happened on.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    format!(
        "{cpu}, {cores} cores, {} GiB RAM; Linux {kernel}",
        mem_kib / (1024 * 1024)
    )
}

/// Writes the Markdown report to `out` and the chart beside it.
pub fn write(
    out: &Path,
    quick: bool,
    sections: &[Section],
    chart: &[(u64, f64, f64)],
) -> Result<()> {
    let chart_name = "benchmarks-lookup-latency.svg";
    let mut md = String::new();
    let _ = writeln!(md, "# ttm benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench`{} on {}. Machine: {}.\n",
        if quick {
            " --quick (smoke run: counts too small for conclusions)"
        } else {
            ""
        },
        date(),
        machine()
    );
    let _ = writeln!(
        md,
        "Every comparison is measured side by side in one run, in alternating rounds \
         (ttm detached, attached, detached, …); ratios compare medians. Rerun with \
         `cargo xtask bench` (about 5 minutes; it builds in release mode, brings the lab up \
         and down, and leaves nothing behind).\n"
    );
    let (mut pass, mut miss) = (0, 0);
    for section in sections {
        let _ = writeln!(md, "## {}\n\n{}\n", section.title, section.method);
        let _ = writeln!(
            md,
            "| measure | figure | target | verdict | note |\n| --- | --- | --- | --- | --- |"
        );
        for f in &section.figures {
            let verdict = match f.pass {
                Some(true) => {
                    pass += 1;
                    "PASS"
                }
                Some(false) => {
                    miss += 1;
                    "MISS"
                }
                None => "",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {verdict} | {} |",
                f.name, f.value, f.target, f.note
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Lookup latency against live records: ![lookup latency]({chart_name})\n"
    );
    let _ = writeln!(md, "Summary: {pass} PASS, {miss} MISS.");
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    let svg_path = out.with_file_name(chart_name);
    std::fs::write(&svg_path, svg(chart))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    Ok(())
}

fn date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A line chart of p50 and p99 lookup latency (µs) against live records (log scale).
pub fn svg(points: &[(u64, f64, f64)]) -> String {
    let (w, h, left, bottom) = (560.0, 320.0, 60.0, 40.0);
    let max_y = points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.2;
    let (min_x, max_x) = (
        points
            .iter()
            .map(|p| (p.0.max(1) as f64).log10())
            .fold(f64::MAX, f64::min),
        points
            .iter()
            .map(|p| (p.0.max(1) as f64).log10())
            .fold(f64::MIN, f64::max),
    );
    let span = (max_x - min_x).max(1.0);
    let x = |n: u64| left + ((n.max(1) as f64).log10() - min_x) / span * (w - left - 20.0);
    let y = |v: f64| h - bottom - v / max_y * (h - bottom - 20.0);
    let line = |pick: fn(&(u64, f64, f64)) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(pick(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"14\">ttm lookup latency by cookie (µs) vs live records</text>\n\
         <line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - bottom,
        r = w - 20.0
    );
    for p in points {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(p.0),
            h - bottom + 16.0,
            p.0
        );
    }
    for frac in [0.0, 0.5, 1.0] {
        let v = max_y * frac;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left - 6.0,
            y(v) + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        line(|p| p.1)
    );
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>",
        line(|p| p.2)
    );
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"34\" fill=\"#1f77b4\">p50</text><text x=\"{:.1}\" y=\"48\" fill=\"#d62728\">p99</text>", w - 80.0, w - 80.0);
    s.push_str("</svg>\n");
    s
}
