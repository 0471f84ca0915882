//! The training commands from the outside: the bundled model, eval on a problem file, bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn whale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whale"))
        .args(args)
        .env_remove("WHALE_MODEL")
        .output()
        .unwrap()
}

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(p)
}

/// A scratch directory, removed when dropped (a failing test's too).
fn tmp(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("whale-train-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_bundled_model_thinks_then_answers_by_default() {
    // the README's first command, with no --model: models/tiny-r1
    let o = whale(&["run", "--prompt", "What is 12 + 30?", "--threads", "1"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let (thinking, answer) = out.split_once("[answer]").expect("an answer section");
    assert!(
        thinking.contains("[thinking]") && thinking.contains("2+0=2"),
        "{out}"
    );
    assert!(answer.contains("12 + 30 = 42"), "{out}");
}

#[test]
fn eval_reads_a_problem_file_and_reports_json() {
    let d_tmp = tmp("problems");
    let d = d_tmp.path();
    let f = d.join("p.jsonl");
    std::fs::write(
        &f,
        "{\"question\": \"What is 12 + 30?\", \"answer\": \"42\"}\n{\"question\": \"What is 305 - 7?\", \"answer\": 298}\n",
    )
    .unwrap();
    let model = repo("models/tiny-r1");
    let o = whale(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--problems",
        f.to_str().unwrap(),
        "--samples",
        "2",
        "--json",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["problems"], 2);
    for k in [
        "greedy_pass1",
        "greedy_format",
        "sampled_pass1",
        "maj_at_k",
        "pass_at_k",
    ] {
        let x = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    // the bundled model knows 2-digit addition
    assert!(r["greedy_pass1"].as_f64().unwrap() >= 0.5, "{r}");
}

#[test]
fn training_commands_refuse_bad_input() {
    let d_tmp = tmp("bad");
    let d = d_tmp.path();
    let model = repo("models/tiny-r1");
    let m = model.to_str().unwrap();
    let bad_file = d.join("bad.jsonl");
    std::fs::write(&bad_file, "{\"question\": \"What is 1 + 1?\"}\n").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["eval", "--model", m, "--task", "div3"],
        vec!["eval", "--model", m],
        vec!["eval", "--model", m, "--task", "add3", "--n", "0"],
        vec![
            "eval",
            "--model",
            m,
            "--problems",
            bad_file.to_str().unwrap(),
        ],
        vec!["eval", "--model", "/nonexistent", "--task", "add3"],
        vec![
            "train",
            "--config",
            "/nonexistent.toml",
            "--out",
            d.to_str().unwrap(),
        ],
        vec![
            "rl",
            "--model",
            m,
            "--out",
            d.to_str().unwrap(),
            "--group",
            "1",
        ],
        vec!["recipe", "huge-r1"],
        vec![
            "recipe",
            "side-runs",
            "--seeds",
            "0",
            "--out",
            d.to_str().unwrap(),
        ],
    ];
    for args in cases {
        let o = whale(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn distill_keeps_correct_teacher_traces_and_trains_a_student_the_engine_loads() {
    let d_tmp = tmp("distill");
    let d = d_tmp.path();
    let cfg = std::fs::read_to_string(repo("configs/tiny-r1-student.toml"))
        .unwrap()
        .replace("steps = 600", "steps = 3")
        .replace("warmup = 50", "warmup = 1");
    let cfg_path = d.join("student.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = d.join("student");
    let teacher = repo("models/tiny-r1");
    let o = whale(&[
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--config",
        cfg_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--task",
        "add2",
        "--n",
        "12",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept = s["kept"].as_u64().unwrap();
    assert!((6..=12).contains(&kept), "{s}");
    let traces = std::fs::read_to_string(out.join("traces.jsonl")).unwrap();
    assert_eq!(traces.lines().count() as u64, kept);
    // every kept trace is a correct, well-formed answer to its question
    for line in traces.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let q = v["question"].as_str().unwrap();
        let r = v["response"].as_str().unwrap();
        let nums: Vec<i64> = q
            .trim_start_matches("What is ")
            .trim_end_matches('?')
            .split(" + ")
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(
            r.contains("</think>") && r.trim_end().ends_with(&(nums[0] + nums[1]).to_string()),
            "{q} -> {r}"
        );
    }
    let e = whale(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--task",
        "add2",
        "--n",
        "3",
        "--max-tokens",
        "8",
        "--threads",
        "1",
    ]);
    assert!(e.status.success(), "{}", text(&e));
}
