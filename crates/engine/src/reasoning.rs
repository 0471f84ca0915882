//! Splits streamed model text into reasoning and answer: text before `</think>` is reasoning.
//! A prompt that already opened `<think>` (the R1 template primes it) starts in reasoning;
//! otherwise output that opens with `<think>` enters it. Tags split across chunks are held back
//! until they can be decided. Each part is trimmed as DeepSeek's API trims it (no whitespace
//! around the reasoning, none before the answer), and the trim is done on the stream itself so
//! that streamed deltas add up to the whole message exactly.

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
    /// reasoning / answer text has been emitted (leading whitespace is dropped before that)
    reasoning_started: bool,
    answer_started: bool,
    /// whitespace at the end of the reasoning so far: emitted once text follows it, dropped at
    /// `</think>` or the end
    held: String,
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
pub(crate) fn partial_tag_suffix(s: &str, tag: &str) -> usize {
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
            reasoning_started: false,
            answer_started: false,
            held: String::new(),
        }
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<Part>) {
        let text = if self.reasoning_started {
            text
        } else {
            text.trim_start()
        };
        if text.is_empty() {
            return;
        }
        let body = text.trim_end();
        if body.is_empty() {
            self.held.push_str(text);
            return;
        }
        let mut emit = std::mem::take(&mut self.held);
        emit.push_str(body);
        self.held.push_str(&text[body.len()..]);
        self.reasoning_started = true;
        out.push(Part::Reasoning(emit));
    }

    fn answer(&mut self, text: &str, out: &mut Vec<Part>) {
        let text = if self.answer_started {
            text
        } else {
            text.trim_start()
        };
        if !text.is_empty() {
            self.answer_started = true;
            out.push(Part::Answer(text.to_string()));
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
                    self.reasoning(&before, &mut out);
                    self.held.clear();
                    self.in_reasoning = false;
                    continue;
                }
                let keep = partial_tag_suffix(&self.pending, CLOSE);
                let emit: String = self.pending.drain(..self.pending.len() - keep).collect();
                self.reasoning(&emit, &mut out);
            } else if !self.pending.is_empty() {
                let text = std::mem::take(&mut self.pending);
                self.answer(&text, &mut out);
            }
            return out;
        }
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.pending);
        self.at_start = false;
        let mut out = vec![];
        if self.in_reasoning {
            self.reasoning(&rest, &mut out);
        } else {
            self.answer(&rest, &mut out);
        }
        self.held.clear();
        out
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
        assert_eq!(a, "The answer is 42.");
    }

    #[test]
    fn model_opens_the_tag_itself() {
        let (r, a) = run(false, &["<th", "ink>\nhmm", "</think>", "42"]);
        assert_eq!(r, "hmm");
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
    fn parts_are_trimmed_wherever_the_stream_is_cut() {
        let text = "\n  Let me see.\n\nIt is 42. \n</think>\n\n The answer:  42 \n";
        let whole = run(true, &[text]);
        assert_eq!(
            whole,
            (
                "Let me see.\n\nIt is 42.".into(),
                "The answer:  42 \n".into()
            )
        );
        for cut in 0..=text.len() {
            if text.is_char_boundary(cut) {
                assert_eq!(
                    run(true, &[&text[..cut], &text[cut..]]),
                    whole,
                    "cut at {cut}"
                );
            }
        }
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(|s| s.as_str()).collect();
        assert_eq!(run(true, &refs), whole);
    }

    #[test]
    fn later_think_tags_in_the_answer_are_text() {
        let (r, a) = run(false, &["answer <think>x</think>"]);
        assert_eq!((r.as_str(), a.as_str()), ("", "answer <think>x</think>"));
    }
}
