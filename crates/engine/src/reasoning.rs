//! Splits streamed model text into reasoning and answer: text before `</think>` is reasoning.
//! A prompt that already opened `<think>` (the R1 template primes it) starts in reasoning;
//! otherwise output that opens with `<think>` enters it. Tags split across chunks are held back
//! until they can be decided.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Reasoning(String),
    Answer(String),
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

pub struct ReasoningSplitter {
    in_reasoning: bool,
    /// still possible that the output opens with `<think>`
    at_start: bool,
    pending: String,
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && tag.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

impl ReasoningSplitter {
    pub fn new(primed: bool) -> Self {
        ReasoningSplitter {
            in_reasoning: primed,
            at_start: !primed,
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.at_start {
                let trimmed = self.pending.trim_start();
                if trimmed.starts_with(OPEN) {
                    let skip = self.pending.len() - trimmed.len() + OPEN.len();
                    self.pending.drain(..skip);
                    self.in_reasoning = true;
                    self.at_start = false;
                    continue;
                }
                if OPEN.starts_with(trimmed) {
                    return out; // undecided: maybe the start of `<think>`
                }
                self.at_start = false;
            }
            if self.in_reasoning {
                if let Some(i) = self.pending.find(CLOSE) {
                    let before: String = self.pending.drain(..i).collect();
                    self.pending.drain(..CLOSE.len());
                    if !before.is_empty() {
                        out.push(Part::Reasoning(before));
                    }
                    self.in_reasoning = false;
                    continue;
                }
                let keep = partial_tag_suffix(&self.pending, CLOSE);
                let emit: String = self.pending.drain(..self.pending.len() - keep).collect();
                if !emit.is_empty() {
                    out.push(Part::Reasoning(emit));
                }
            } else if !self.pending.is_empty() {
                out.push(Part::Answer(std::mem::take(&mut self.pending)));
            }
            return out;
        }
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.pending);
        self.at_start = false;
        if rest.is_empty() {
            vec![]
        } else if self.in_reasoning {
            vec![Part::Reasoning(rest)]
        } else {
            vec![Part::Answer(rest)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(primed: bool, chunks: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::new(primed);
        let mut parts: Vec<Part> = chunks.iter().flat_map(|c| s.push(c)).collect();
        parts.extend(s.finish());
        let (mut r, mut a) = (String::new(), String::new());
        for p in parts {
            match p {
                Part::Reasoning(t) => r += &t,
                Part::Answer(t) => a += &t,
            }
        }
        (r, a)
    }

    #[test]
    fn primed_prompt_without_opening_tag() {
        let (r, a) = run(
            true,
            &["12 plus", " 30 is 42.</", "think>", "\n\nThe answer is 42."],
        );
        assert_eq!(r, "12 plus 30 is 42.");
        assert_eq!(a, "\n\nThe answer is 42.");
    }

    #[test]
    fn model_opens_the_tag_itself() {
        let (r, a) = run(false, &["<th", "ink>\nhmm", "</think>", "42"]);
        assert_eq!(r, "\nhmm");
        assert_eq!(a, "42");
    }

    #[test]
    fn no_tags_is_all_answer_and_unclosed_is_all_reasoning() {
        assert_eq!(
            run(false, &["just ", "an answer"]),
            (String::new(), "just an answer".into())
        );
        assert_eq!(
            run(true, &["thinking forever </thi"]),
            ("thinking forever </thi".into(), String::new())
        );
    }

    #[test]
    fn later_think_tags_in_the_answer_are_text() {
        let (r, a) = run(false, &["answer <think>x</think>"]);
        assert_eq!((r.as_str(), a.as_str()), ("", "answer <think>x</think>"));
    }
}
