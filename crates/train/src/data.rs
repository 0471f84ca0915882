//! Supervised data: a seeded mix of tasks, each with a fixed pool of training problems (so
//! held-out sets can exclude them), rendered through the chat template with the worked solution
//! as the assistant's response.

use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use whale_engine::tokenizer::{ChatTokenizer, Message};
use whale_tasks::{Problem, Task};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    /// add3, sub2, mul3, countdown3, ...
    pub name: String,
    /// relative sampling weight
    #[serde(default = "one")]
    pub weight: f64,
    /// number of distinct training problems
    pub pool: usize,
}

fn one() -> f64 {
    1.0
}

pub struct TaskMix {
    pub entries: Vec<(Task, f64, Vec<Problem>)>,
    pub sources: Vec<Source>,
}

/// Where a stage's training problems came from, recorded in the checkpoint's
/// `training_data.json` so held-out sets can exclude every problem the model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub task: String,
    pub pool: usize,
    pub seed: u64,
}

impl Source {
    pub fn problems(&self) -> Result<Vec<Problem>> {
        Ok(whale_tasks::problems(
            Task::parse(&self.task)?,
            self.pool,
            self.seed,
            &HashSet::new(),
        ))
    }
}

pub fn read_sources(dir: &std::path::Path) -> Result<Vec<Source>> {
    let path = dir.join("training_data.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(serde_json::from_value(v["sources"].clone())?)
}

pub fn write_sources(dir: &std::path::Path, sources: &[Source]) -> Result<()> {
    let v = serde_json::json!({ "sources": sources });
    std::fs::write(
        dir.join("training_data.json"),
        serde_json::to_string_pretty(&v)?,
    )?;
    Ok(())
}

/// Questions of `task` in any of `sources`.
pub fn trained_questions(sources: &[Source], task: Task) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for s in sources.iter().filter(|s| s.task == task.name()) {
        out.extend(s.problems()?.into_iter().map(|p| p.question));
    }
    Ok(out)
}

/// The pool seed of a task in a run seeded `seed` (also used by held-out sets to exclude it).
fn pool_seed(seed: u64, task: Task) -> u64 {
    seed.wrapping_mul(0x9E37_79B9)
        ^ task
            .name()
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
}

impl TaskMix {
    pub fn new(specs: &[TaskSpec], seed: u64) -> Result<Self> {
        if specs.is_empty() {
            bail!("the data mix names no tasks");
        }
        let (mut entries, mut sources) = (vec![], vec![]);
        for s in specs {
            let task = Task::parse(&s.name)?;
            if !crate::config::positive(s.weight) || s.pool == 0 {
                bail!("task {}: weight and pool must be positive", s.name);
            }
            let source = Source {
                task: task.name(),
                pool: s.pool,
                seed: pool_seed(seed, task),
            };
            entries.push((task, s.weight, source.problems()?));
            sources.push(source);
        }
        Ok(TaskMix { entries, sources })
    }

    pub fn sample(&self, rng: &mut impl Rng) -> (Task, &Problem) {
        let total: f64 = self.entries.iter().map(|e| e.1).sum();
        let mut x = rng.gen::<f64>() * total;
        for (task, w, pool) in &self.entries {
            if x < *w {
                return (*task, &pool[rng.gen_range(0..pool.len())]);
            }
            x -= w;
        }
        let last = self.entries.last().unwrap();
        (last.0, &last.2[rng.gen_range(0..last.2.len())])
    }

    /// Text to train the tokenizer on: questions and worked solutions.
    pub fn corpus(&self, per_task: usize) -> Vec<String> {
        let mut v = vec![];
        for (task, _, pool) in &self.entries {
            for p in pool.iter().take(per_task) {
                v.push(p.question.clone());
                v.push(task.solve(p));
            }
        }
        v
    }
}

/// One training sequence: the rendered prompt (ending in the primed `<think>\n`) then the
/// response and EOS.
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

pub fn prompt_ids(tok: &ChatTokenizer, question: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode_chat(&[Message::new("user", question)], &serde_json::Value::Null)?
        .1)
}

/// Earlier turns of a conversation: each question with the final answer only, as the R1
/// template sends earlier assistant turns (their reasoning dropped).
pub type History = Vec<(String, String)>;

/// A training example: the conversation so far, then the worked response to its last question.
pub fn example(
    tok: &ChatTokenizer,
    history: &[(String, String)],
    question: &str,
    response: &str,
    eos: u32,
) -> Result<Example> {
    let mut messages = vec![];
    for (q, a) in history {
        messages.push(Message::new("user", q));
        messages.push(Message::new("assistant", a));
    }
    messages.push(Message::new("user", question));
    let mut ids = tok.encode_chat(&messages, &serde_json::Value::Null)?.1;
    let prompt_len = ids.len();
    ids.extend(tok.encode(response)?);
    ids.push(eos);
    Ok(Example { ids, prompt_len })
}

/// Inputs, next-token targets and loss weights, right-padded to one length.
pub struct Batch {
    pub inputs: Vec<Vec<u32>>,
    pub targets: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
    pub lens: Vec<usize>,
}

impl Batch {
    /// `response_only`: loss on the response and EOS (SFT); otherwise on every token.
    pub fn new(examples: &[Example], response_only: bool, pad: u32) -> Batch {
        let s = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(1);
        let mut b = Batch {
            inputs: vec![],
            targets: vec![],
            weights: vec![],
            lens: vec![],
        };
        for e in examples {
            let n = e.ids.len() - 1;
            let mut inp = e.ids[..n].to_vec();
            let mut tgt = e.ids[1..].to_vec();
            let mut w: Vec<f32> = (0..n)
                .map(|i| {
                    if !response_only || i + 1 >= e.prompt_len {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            inp.resize(s, pad);
            tgt.resize(s, pad);
            w.resize(s, 0.0);
            b.inputs.push(inp);
            b.targets.push(tgt);
            b.weights.push(w);
            b.lens.push(n);
        }
        b
    }

    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whale_tasks::answer_part;

    #[test]
    fn a_later_turn_trains_on_its_own_response_only() {
        let task = Task::parse("add2").unwrap();
        let mut probs = whale_tasks::problems(task, 200, 7, &HashSet::new());
        let corpus: Vec<String> = probs
            .iter()
            .flat_map(|p| [p.question.clone(), task.solve(p)])
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        crate::tokenizer::save(&crate::tokenizer::train(&corpus, 300).unwrap(), dir, 256).unwrap();
        let tok = ChatTokenizer::load(dir).unwrap();
        let (first, second) = (probs.remove(0), probs.remove(0));
        let first_response = task.solve(&first);
        let history = vec![(
            first.question.clone(),
            answer_part(&first_response).unwrap().to_string(),
        )];
        let e = example(&tok, &history, &second.question, &task.solve(&second), 1).unwrap();
        let prompt = tok.decode(&e.ids[..e.prompt_len]).unwrap();
        // the earlier turn is there with its answer, without its reasoning
        assert!(prompt.contains(&first.question), "{prompt}");
        assert!(
            prompt.contains(answer_part(&first_response).unwrap()),
            "{prompt}"
        );
        assert!(
            !prompt.contains("carry") && !prompt.contains("digits"),
            "{prompt}"
        );
        assert!(prompt.ends_with("<think>\n"), "{prompt}");
        // the loss falls on the last response and its EOS only
        let b = Batch::new(std::slice::from_ref(&e), true, 2);
        let trained = b.weights[0].iter().filter(|w| **w > 0.0).count();
        assert_eq!(trained, e.ids.len() - e.prompt_len);
        std::fs::remove_dir_all(dir).ok();
    }
}
