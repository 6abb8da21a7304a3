//! `eval`'s PNG plots from a synthetic summary with known values: the files decode, have the
//! documented size, and show plan colours exactly where the values put them (and none where
//! no value lies); odd summaries give skips or errors, never panics; `eval --plots-from`
//! redraws from a summary.json without a model.

use std::path::{Path, PathBuf};
use std::process::Command;

use flux_examples::eval_plots::{
    draw_plots, EvalSummary, ACCURACY_AXIS, ACCURACY_VS_LENGTH, ACCURACY_VS_SPARSITY,
    LENGTH_AXIS_PADDING, PLOT_AREA, SIZE, SPARSITY_AXIS, SPEEDUP_VS_LENGTH,
};
use flux_models::eval::SummaryRow;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-eval-plots-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn row(
    task: &str,
    length: usize,
    plan: &str,
    accuracy: f64,
    sparsity: f64,
    tps: f64,
) -> SummaryRow {
    SummaryRow {
        task: task.into(),
        length,
        plan: plan.into(),
        samples: 4,
        accuracy,
        sparsity,
        prefill_tokens_per_second: tps,
        decode_tokens_per_second: 10.0,
    }
}

const LENGTHS: [usize; 3] = [1024, 4096, 16384];

/// Each plan: (name, accuracy of task a, of task b, sparsity, prefill tokens/s). Means over
/// the two tasks: 90, 20, 70, 45; speed-ups over all-full: 1, 3, 2, 2.5.
const PLANS: [(&str, f64, f64, f64, f64); 4] = [
    ("all-full", 100.0, 80.0, 0.0, 1000.0),
    ("all-sparse", 40.0, 0.0, 1.0, 3000.0),
    ("router:a.safetensors", 60.0, 80.0, 0.5, 2000.0),
    ("router:b.safetensors", 50.0, 40.0, 0.75, 2500.0),
];

fn synthetic() -> EvalSummary {
    let mut rows = Vec::new();
    for task in ["a", "b"] {
        for &length in &LENGTHS {
            for (plan, acc_a, acc_b, sparsity, tps) in PLANS {
                let accuracy = if task == "a" { acc_a } else { acc_b };
                // The speed per task differs; the ratio to all-full at the same task does not.
                let scale = if task == "a" { 1.0 } else { 0.5 };
                rows.push(row(task, length, plan, accuracy, sparsity, tps * scale));
            }
        }
    }
    EvalSummary {
        plans: PLANS.iter().map(|p| p.0.to_string()).collect(),
        rows,
    }
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            rgb: buf,
        }
    }

    fn pixel(&self, x: i32, y: i32) -> Option<[u8; 3]> {
        if x < 0 || y < 0 || x >= self.width as i32 || y >= self.height as i32 {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// A plan's line or marker within `r` pixels: a saturated colour (the background is white,
    /// text, axes and grid are grey).
    fn coloured_near(&self, (x, y): (i32, i32), r: i32) -> bool {
        (-r..=r).any(|dy| {
            (-r..=r).any(|dx| {
                self.pixel(x + dx, y + dy)
                    .is_some_and(|[r, g, b]| r.max(g).max(b) as i32 - r.min(g).min(b) as i32 > 80)
            })
        })
    }

    fn dark_pixels_in_rows(&self, rows: std::ops::Range<i32>) -> usize {
        rows.flat_map(|y| (0..self.width as i32).map(move |x| (x, y)))
            .filter(|&(x, y)| self.pixel(x, y).is_some_and(|p| p.iter().all(|&c| c < 100)))
            .count()
    }
}

/// The pixel of `(x, y)` on axes `xr` and `yr` in the plot area.
fn to_pixel(x: f64, y: f64, xr: (f64, f64), yr: (f64, f64)) -> (i32, i32) {
    let a = PLOT_AREA;
    let px = a.left as f64 + (x - xr.0) / (xr.1 - xr.0) * (a.right - a.left) as f64;
    let py = a.bottom as f64 - (y - yr.0) / (yr.1 - yr.0) * (a.bottom - a.top) as f64;
    (px.round() as i32, py.round() as i32)
}

fn length_axis() -> (f64, f64) {
    (
        (LENGTHS[0] as f64).log2() - LENGTH_AXIS_PADDING,
        (LENGTHS[2] as f64).log2() + LENGTH_AXIS_PADDING,
    )
}

fn check_image(path: &Path) -> Image {
    let image = Image::read(path);
    assert_eq!((image.width, image.height), SIZE, "{}", path.display());
    // The title is rendered with the compiled-in font.
    assert!(
        image.dark_pixels_in_rows(0..PLOT_AREA.top - 10) > 100,
        "{}: no title text",
        path.display()
    );
    image
}

#[test]
fn plots_show_the_values_where_they_lie() {
    let dir = temp_dir("known");
    let plots = draw_plots(&synthetic(), &dir).unwrap();
    assert_eq!(
        plots.written,
        vec![
            dir.join(ACCURACY_VS_LENGTH),
            dir.join(ACCURACY_VS_SPARSITY),
            dir.join(SPEEDUP_VS_LENGTH)
        ]
    );
    assert!(plots.skipped.is_empty(), "{:?}", plots.skipped);
    let accuracy = (ACCURACY_AXIS.start, ACCURACY_AXIS.end);

    let image = check_image(&dir.join(ACCURACY_VS_LENGTH));
    for (plan, a, b, _, _) in PLANS {
        for &length in &LENGTHS {
            let p = to_pixel(
                (length as f64).log2(),
                (a + b) / 2.0,
                length_axis(),
                accuracy,
            );
            assert!(image.coloured_near(p, 3), "{plan} at {length}: {p:?}");
        }
    }
    // Between the lines (45 and 70) there is nothing.
    let empty = to_pixel(12.0, 57.5, length_axis(), accuracy);
    assert!(!image.coloured_near(empty, 3), "{empty:?}");

    let image = check_image(&dir.join(ACCURACY_VS_SPARSITY));
    let sparsity = (SPARSITY_AXIS.start, SPARSITY_AXIS.end);
    for (plan, a, b, s, _) in PLANS {
        let p = to_pixel(s, (a + b) / 2.0, sparsity, accuracy);
        assert!(image.coloured_near(p, 3), "{plan}: {p:?}");
    }
    for empty in [(0.25, 30.0), (0.9, 85.0)] {
        let p = to_pixel(empty.0, empty.1, sparsity, accuracy);
        assert!(!image.coloured_near(p, 3), "{empty:?}: {p:?}");
    }

    let image = check_image(&dir.join(SPEEDUP_VS_LENGTH));
    // The axis runs from 0 to 1.15 x the largest speed-up (3).
    let speed = (0.0, 3.0 * 1.15);
    for (plan, _, _, _, tps) in PLANS {
        for &length in &LENGTHS {
            let p = to_pixel((length as f64).log2(), tps / 1000.0, length_axis(), speed);
            assert!(image.coloured_near(p, 3), "{plan} at {length}: {p:?}");
        }
    }
    let empty = to_pixel(13.0, 1.5, length_axis(), speed);
    assert!(!image.coloured_near(empty, 3), "{empty:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn odd_summaries_are_skipped_or_refused_without_panics() {
    let dir = temp_dir("odd");
    let err = draw_plots(&EvalSummary::default(), &dir).unwrap_err();
    assert!(format!("{err:#}").contains("no rows"), "{err:#}");

    // One length, no all-full, a NaN: accuracy plots drawn, the speed-up skipped and said why.
    let summary = EvalSummary {
        plans: vec!["last:4".into(), "missing-plan".into()],
        rows: vec![
            row("a", 2048, "last:4", 50.0, 0.25, 100.0),
            row("b", 2048, "last:4", f64::NAN, 0.25, 100.0),
        ],
    };
    let plots = draw_plots(&summary, &dir).unwrap();
    assert_eq!(plots.written.len(), 2, "{plots:?}");
    assert_eq!(plots.skipped.len(), 1);
    assert!(plots.skipped[0].contains(SPEEDUP_VS_LENGTH) && plots.skipped[0].contains("all-full"));
    let image = check_image(&dir.join(ACCURACY_VS_LENGTH));
    let x = (11.0 - LENGTH_AXIS_PADDING, 11.0 + LENGTH_AXIS_PADDING);
    let p = to_pixel(11.0, 50.0, x, (ACCURACY_AXIS.start, ACCURACY_AXIS.end));
    assert!(image.coloured_near(p, 3), "{p:?}");

    // Nothing finite at all, lengths of 0, infinities: every plot skipped, no file, no panic.
    let summary = EvalSummary {
        plans: vec![],
        rows: vec![
            row("a", 0, "all-full", 50.0, f64::NAN, 100.0),
            row("a", 1024, "all-full", f64::NAN, f64::NAN, f64::INFINITY),
        ],
    };
    let dir2 = temp_dir("nan");
    let plots = draw_plots(&summary, &dir2).unwrap();
    assert!(plots.written.is_empty(), "{plots:?}");
    assert_eq!(plots.skipped.len(), 3, "{plots:?}");

    // An output path that is a file is an error naming the file.
    let blocked = temp_dir("blocked");
    std::fs::create_dir_all(blocked.join(ACCURACY_VS_LENGTH)).unwrap();
    let err = draw_plots(&synthetic(), &blocked).unwrap_err();
    assert!(format!("{err:#}").contains(ACCURACY_VS_LENGTH), "{err:#}");
    for d in [dir, dir2, blocked] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn eval_redraws_plots_from_a_summary_file() {
    let dir = temp_dir("from");
    std::fs::create_dir_all(&dir).unwrap();
    let summary = synthetic();
    let mut json = serde_json::json!({"plans": summary.plans, "rows": summary.rows});
    // NaN is written as null by serde_json: read back as a left-out value, not an error.
    json["rows"][0]["accuracy"] = serde_json::Value::Null;
    std::fs::write(dir.join("summary.json"), json.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["--plots-from", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [ACCURACY_VS_LENGTH, ACCURACY_VS_SPARSITY, SPEEDUP_VS_LENGTH] {
        assert!(
            stdout.contains(dir.join(name).to_str().unwrap()),
            "{stdout}"
        );
        check_image(&dir.join(name));
    }
    assert_eq!(
        EvalSummary::read(&dir.join("summary.json"))
            .unwrap()
            .rows
            .len(),
        24
    );

    // A folder without a summary: exit code 1 and the file named.
    let empty = temp_dir("from-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["--plots-from", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("summary.json"), "{stderr}");
    for d in [dir, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}
