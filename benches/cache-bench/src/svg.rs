//! The `--svg` bar chart of median ops/s.

/// A horizontal bar chart of `rows` on a log10 axis.
pub(crate) fn svg_chart(title: &str, rows: &[(&str, f64)]) -> String {
    use std::fmt::Write as _;
    const LABEL_W: f64 = 210.0;
    const BAR_W: f64 = 560.0;
    const ROW_H: f64 = 26.0;
    const TOP: f64 = 50.0;
    let lo = 3.0; // 1k ops/s
    let hi = rows
        .iter()
        .map(|(_, v)| v.log10().ceil())
        .fold(lo + 1.0, f64::max);
    let x = |v: f64| LABEL_W + ((v.log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * BAR_W;
    let height = TOP + ROW_H * rows.len() as f64 + 40.0;
    let width = LABEL_W + BAR_W + 120.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LABEL_W}" y="24" font-size="15">{title}</text>"#
    );
    let bottom = TOP + ROW_H * rows.len() as f64;
    let mut decade = lo;
    while decade <= hi {
        let gx = x(10f64.powf(decade));
        let label = match decade as i32 {
            3 => "1k".to_owned(),
            4 => "10k".to_owned(),
            5 => "100k".to_owned(),
            6 => "1M".to_owned(),
            7 => "10M".to_owned(),
            d => format!("1e{d}"),
        };
        let _ = writeln!(
            out,
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\n<text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            bottom + 18.0
        );
        decade += 1.0;
    }
    for (i, (name, v)) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let ours = name.starts_with("cache") && !name.starts_with("cached_crate");
        let ours = ours || matches!(*name, "miss_path" | "redis_paused");
        let fill = if ours { "#2b6cb0" } else { "#a0aec0" };
        let end = x(*v);
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{name}</text>\n<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LABEL_W - 8.0,
            y + 17.0,
            y + 4.0,
            end - LABEL_W,
            ROW_H - 8.0,
            end + 6.0,
            y + 17.0,
            human(*v)
        );
    }
    out.push_str("</svg>\n");
    out
}

pub(crate) fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
