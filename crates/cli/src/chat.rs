//! `whale run` and `whale chat`: text in, reasoning and answer streamed out.

use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use whale_engine::{Engine, GenerateParams, Generation, Message, Part, SamplingParams, SpecStats};

#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// 0 = greedy; R1's recommended 0.6 by default
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// stop when this text appears (repeatable)
    #[arg(long)]
    stop: Vec<String>,
    /// hide the reasoning, print only the answer
    #[arg(long)]
    no_reasoning: bool,
    /// weight format: auto (as stored), f32, bf16, bf16-fast (bf16 products, not exact), f16, int8, int4
    #[arg(long, default_value = "auto")]
    dtype: String,
}

impl SamplingArgs {
    fn params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                seed: self.seed,
                ..Default::default()
            },
            stop: self.stop.clone(),
            ignore_eos: false,
        }
    }
}

/// Speculative decoding by a smaller model with the same tokenizer (greedy only).
#[derive(Args, Clone)]
pub struct DraftArgs {
    /// a smaller model sharing the tokenizer drafts for this one (greedy only: --temperature 0;
    /// the same text as without; `bench` runs plain and drafted generation alternately and
    /// reports the acceptance and the speed-up)
    #[arg(long, value_name = "DIR")]
    pub draft_model: Option<PathBuf>,
    /// tokens the draft model proposes per step
    #[arg(long, default_value_t = 4, requires = "draft_model")]
    pub draft_tokens: usize,
    /// the draft model's weight format (default: --dtype's)
    #[arg(long, requires = "draft_model")]
    pub draft_dtype: Option<String>,
}

/// The draft model of `--draft-model DIR`, checked to share `model_dir`'s tokenizer.
pub fn load_draft(model_dir: &Path, main: &Engine, dir: &Path, dtype: &str) -> Result<Engine> {
    let draft = Engine::load_as(dir, false, whale_model::parse_dtype(dtype)?)?;
    whale_engine::draft::check_draft_matches(
        model_dir,
        dir,
        main.model.config.vocab_size,
        draft.model.config.vocab_size,
    )?;
    Ok(draft)
}

/// One line on stderr: how many drafts were accepted, and the speed end to end.
pub fn report_draft(stats: &SpecStats, tokens: usize, secs: f64) {
    eprintln!(
        "draft model: {} of {} drafts accepted ({:.0}%), {} tokens in {:.2}s ({:.1} tokens/s)",
        stats.accepted,
        stats.drafted,
        100.0 * stats.acceptance(),
        tokens,
        secs,
        tokens as f64 / secs
    );
}

#[derive(Args)]
pub struct RunArgs {
    /// checkpoint directory (default: the bundled model)
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    /// a system message
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
}

/// Prints streamed parts: reasoning under a "thinking" marker (dimmed on a terminal), then
/// the answer under its own marker.
struct Printer {
    color: bool,
    show_reasoning: bool,
    state: u8, // 0 nothing yet, 1 in reasoning, 2 in answer
}

impl Printer {
    fn new(show_reasoning: bool) -> Self {
        Printer {
            color: std::io::stdout().is_terminal(),
            show_reasoning,
            state: 0,
        }
    }

    fn part(&mut self, p: &Part) {
        let mut out = std::io::stdout().lock();
        match p {
            Part::Reasoning(t) => {
                if !self.show_reasoning {
                    return;
                }
                if self.state == 0 {
                    let _ = write!(
                        out,
                        "{}",
                        if self.color {
                            "\x1b[2m[thinking]\n"
                        } else {
                            "[thinking]\n"
                        }
                    );
                    self.state = 1;
                }
                let _ = write!(out, "{t}");
            }
            Part::Answer(t) => {
                if self.state != 2 {
                    if self.state == 1 || self.show_reasoning {
                        let sep = if self.state == 1 { "\n" } else { "" };
                        let _ = write!(
                            out,
                            "{sep}{}",
                            if self.color {
                                "\x1b[0m[answer]\n"
                            } else {
                                "[answer]\n"
                            }
                        );
                    }
                    self.state = 2;
                }
                let _ = write!(out, "{t}");
            }
        }
        let _ = out.flush();
    }

    fn end(&mut self, g: &Generation) {
        let mut out = std::io::stdout().lock();
        if self.color && self.state == 1 {
            let _ = write!(out, "\x1b[0m");
        }
        let _ = writeln!(out);
        let secs = g.decode_time.as_secs_f64();
        let tps = if secs > 0.0 {
            g.ids.len() as f64 / secs
        } else {
            0.0
        };
        eprintln!(
            "[{} prompt tokens, {} generated, {:.1} tok/s, finish: {}]",
            g.prompt_tokens,
            g.ids.len(),
            tps,
            g.finish.as_str()
        );
    }
}

/// The model, and the draft model where `--draft-model` names one.
fn load(
    model: &Option<PathBuf>,
    s: &SamplingArgs,
    d: &DraftArgs,
) -> Result<(Engine, Option<Engine>)> {
    let dir = match model {
        Some(m) => m.clone(),
        None => crate::default_model()?,
    };
    if d.draft_model.is_some() && s.temperature != 0.0 {
        anyhow::bail!("--draft-model is greedy only for now: use --temperature 0");
    }
    let engine = Engine::load_as(&dir, true, whale_model::parse_dtype(&s.dtype)?)?;
    let draft = match &d.draft_model {
        Some(dd) => Some(load_draft(
            &dir,
            &engine,
            dd,
            d.draft_dtype.as_deref().unwrap_or(&s.dtype),
        )?),
        None => None,
    };
    Ok((engine, draft))
}

/// One answer, drafted where a draft model is given (its acceptance reported).
fn answer(
    engine: &Engine,
    draft: &Option<Engine>,
    k: usize,
    messages: &[Message],
    params: &GenerateParams,
    printer: &mut Printer,
) -> Result<Generation> {
    let (g, stats) = engine.chat_drafted(
        messages,
        params,
        draft.as_ref().map(|d| (&d.model, k)),
        |p| printer.part(p),
    )?;
    printer.end(&g);
    if let Some(st) = stats {
        report_draft(&st, g.ids.len(), g.decode_time.as_secs_f64());
    }
    Ok(g)
}

pub fn run(a: RunArgs) -> Result<()> {
    let (engine, draft) = load(&a.model, &a.sampling, &a.draft)?;
    let mut messages = vec![];
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", &a.prompt));
    let mut printer = Printer::new(!a.sampling.no_reasoning);
    let params = a.sampling.params();
    answer(
        &engine,
        &draft,
        a.draft.draft_tokens,
        &messages,
        &params,
        &mut printer,
    )?;
    Ok(())
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let (engine, draft) = load(&a.model, &a.sampling, &a.draft)?;
    let mut history = vec![];
    if let Some(s) = &a.system {
        history.push(Message::new("system", s));
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("whale chat: type a message; /reset clears the history, /exit or Ctrl-D quits");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read standard input")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m: &Message| m.role == "system");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let mut printer = Printer::new(!a.sampling.no_reasoning);
        let params = a.sampling.params();
        match answer(
            &engine,
            &draft,
            a.draft.draft_tokens,
            &history,
            &params,
            &mut printer,
        ) {
            Ok(g) => {
                // the template drops earlier turns' reasoning; keep the answer as the turn
                history.push(Message::new("assistant", &g.answer));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}
