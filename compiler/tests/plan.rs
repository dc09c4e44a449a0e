//! Data-driven memory planner tests: each `tests/plan/*.txt` holds a
//! schedule (tensors with lifetimes and sizes, in-place pairs, alignment,
//! window) and, below a `==` line, the expected plan. The test plans the
//! schedule with every strategy, checks each plan is valid (no live tensors
//! overlap, offsets aligned, no tensor crosses a window), and compares the
//! figures and offsets with the expected text. `DRIFT_BLESS=1` rewrites the
//! expected part; review the diff.
//!
//! Input lines (`#` starts a comment):
//! ```text
//! align 16                 offsets are multiples of this (default 4)
//! big_align 65536 256      tensors of at least 65536 bytes: multiples of 256
//! window 1024              optional: tensors that fit must not cross multiples of it
//! show greedy_in_order     whose offsets to list (default best)
//! tensor NAME FIRST LAST BYTES
//! in_place INPUT OUTPUT    OUTPUT may take INPUT's memory
//! ```

use drift_compiler::plan::{self, Lifetime, Problem, Strategy};
use std::fmt::Write;
use std::path::{Path, PathBuf};

const SEPARATOR: &str = "== expected (DRIFT_BLESS=1 rewrites what follows)";

struct Case {
    names: Vec<String>,
    problem: Problem,
    show: Strategy,
}

fn parse(text: &str) -> Result<Case, String> {
    let mut names: Vec<String> = vec![];
    let mut problem = Problem { tensors: vec![], in_place: vec![], align: 4, big_align: None, window: None };
    let mut show = Strategy::Best;
    let mut pairs: Vec<(String, String)> = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| format!("line {}: {what}: '{line}'", n + 1);
        let num = |w: &str| w.parse::<u64>().map_err(|_| bad("not a number"));
        match words.as_slice() {
            [] => {}
            ["align", a] => problem.align = num(a)?,
            ["window", w] => problem.window = Some(num(w)?),
            ["big_align", min, a] => problem.big_align = Some((num(min)?, num(a)?)),
            ["show", s] => show = Strategy::from_name(s).ok_or_else(|| bad("unknown strategy"))?,
            ["tensor", name, first, last, bytes] => {
                names.push(name.to_string());
                let (first, last) = (num(first)? as usize, num(last)? as usize);
                if last < first {
                    return Err(bad("last step before first"));
                }
                problem.tensors.push(Lifetime { first, last, bytes: num(bytes)? });
            }
            ["in_place", a, b] => pairs.push((a.to_string(), b.to_string())),
            _ => return Err(bad("cannot read")),
        }
    }
    let index = |name: &str| names.iter().position(|n| n == name).ok_or(format!("unknown tensor '{name}'"));
    for (a, b) in &pairs {
        problem.in_place.push((index(a)?, index(b)?));
    }
    Ok(Case { names, problem, show })
}

/// The expected part: bounds, every strategy's total, the shown plan.
fn render(case: &Case) -> Result<String, String> {
    let p = &case.problem;
    let mut s = String::new();
    let _ = writeln!(s, "naive {}", plan::naive_bytes(&p.tensors));
    let _ = writeln!(s, "lower_bound {}", plan::problem_lower_bound(p));
    let mut shown = None;
    for strategy in plan::ORDERS.into_iter().chain([Strategy::Best]) {
        let planned = plan::plan(p, strategy);
        plan::check(p, &planned).map_err(|e| format!("{strategy}: invalid plan: {e}"))?;
        let _ = write!(s, "{strategy} {}", planned.total);
        if strategy == Strategy::Best {
            let _ = write!(s, " (by {})", planned.strategy);
        }
        let _ = writeln!(s);
        if strategy == case.show {
            shown = Some(planned);
        }
    }
    let shown = shown.expect("every strategy is planned");
    let _ = writeln!(s, "offsets of {}:", case.show);
    for (name, off) in case.names.iter().zip(&shown.offsets) {
        let _ = writeln!(s, "{name} {off}");
    }
    for &(a, b) in &shown.in_place {
        let _ = writeln!(s, "in place {} -> {}", case.names[a], case.names[b]);
    }
    Ok(s)
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn planner_cases_match_their_expected_plans() {
    let bless = std::env::var_os("DRIFT_BLESS").is_some();
    let files = case_files();
    assert!(files.len() >= 5, "expected the planner cases in tests/plan, found {}", files.len());
    let mut failures = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (input, expected) = match text.split_once(SEPARATOR) {
            Some((i, e)) => (i.to_string(), e.trim_start_matches('\n').to_string()),
            None => (text.clone(), String::new()),
        };
        let got = match parse(&input).and_then(|c| render(&c)) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        if bless {
            let input = input.trim_end_matches('\n');
            std::fs::write(file, format!("{input}\n{SEPARATOR}\n{got}")).expect("rewrite case");
        } else if got != expected {
            failures.push(format!("{}: expected\n{expected}\ngot\n{got}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} planner case(s) differ (DRIFT_BLESS=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
