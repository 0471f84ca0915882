//! `whale distill`: the teacher answers many fresh problems, only correct traces are kept
//! (rejection sampling, as R1's distilled models were made), and a smaller student is trained on
//! them with the teacher's tokenizer.

use crate::config::TrainConfig;
use crate::data::{prompt_ids, read_sources, write_sources, Source};
use crate::pretrain::{run_on, Data, Summary};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use whale_engine::Engine;
use whale_tasks::{check, Task};

#[derive(Clone, Debug, Serialize)]
pub struct DistillSummary {
    pub problems: usize,
    pub kept: usize,
    pub student: Summary,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    teacher: &Path,
    student: &TrainConfig,
    tasks: &[String],
    per_task: usize,
    temperature: f32,
    out: &Path,
    progress: bool,
) -> Result<DistillSummary> {
    if per_task == 0 || tasks.is_empty() {
        bail!("distill: give tasks and a positive number of problems per task");
    }
    let engine = Engine::load(teacher, true)?;
    let tok = engine.tokenizer()?;
    let mut sources = read_sources(teacher)?;
    let (mut traces, mut asked) = (vec![], 0usize);
    for (i, name) in tasks.iter().enumerate() {
        let task = Task::parse(name)?;
        let src = Source {
            task: task.name(),
            pool: per_task,
            seed: 0xD157_0000 + i as u64,
        };
        let problems = src.problems()?;
        sources.push(src);
        let prompts = problems
            .iter()
            .map(|p| prompt_ids(tok, &p.question))
            .collect::<Result<Vec<_>>>()?;
        let outs = crate::rollout::generate(&engine, &prompts, 1, temperature, 11, 256)?;
        for (p, r) in problems.iter().zip(outs) {
            asked += 1;
            let r = &r[0];
            let o = check(p, &r.text);
            if o.correct && o.format && r.finished {
                traces.push((p.question.clone(), r.text.clone()));
            }
        }
    }
    std::fs::create_dir_all(out)?;
    let lines: Vec<String> = traces
        .iter()
        .map(|(q, r)| serde_json::json!({"question": q, "response": r}).to_string())
        .collect();
    std::fs::write(out.join("traces.jsonl"), lines.join("\n") + "\n")?;
    let summary = run_on(
        student,
        &Data::Traces {
            traces: &traces,
            tokenizer_from: teacher,
        },
        out,
        false,
        progress,
    )?;
    write_sources(out, &sources)?;
    Ok(DistillSummary {
        problems: asked,
        kept: traces.len(),
        student: summary,
    })
}
