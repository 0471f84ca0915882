//! Parsing and checking a model's response.

use crate::countdown::eval_expression;
use crate::{Kind, Problem};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// the final answer is right
    pub correct: bool,
    /// non-empty reasoning, one `</think>`, then a non-empty answer
    pub format: bool,
}

/// The answer after the only `</think>`, or None when the response has no reasoning block.
pub fn answer_part(response: &str) -> Option<&str> {
    let (_, after) = response.split_once("</think>")?;
    Some(after.trim())
}

pub fn check_format(response: &str) -> bool {
    let Some((think, answer)) = response.split_once("</think>") else {
        return false;
    };
    !think.trim().is_empty()
        && !think.contains("<think>")
        && !answer.trim().is_empty()
        && !answer.contains("</think>")
        && !answer.contains("<think>")
}

/// An integer written with an optional minus sign (digits only, commas allowed).
pub fn parse_int(s: &str) -> Option<i64> {
    let t: String = s.trim().chars().filter(|&c| c != ',').collect();
    let digits = t.strip_prefix('-').unwrap_or(&t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 17 {
        return None;
    }
    t.parse().ok()
}

/// The last integer in `text` (so "482 + 739 = 1221" and "The answer is 1221." both give 1221).
fn last_int(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (b[start - 1].is_ascii_digit() || b[start - 1] == b',') {
        start -= 1;
    }
    if start > 0 && b[start - 1] == b'-' {
        // a minus sign, not a subtraction: nothing or whitespace/= before it
        let prev = text[..start - 1].trim_end();
        if prev.is_empty() || prev.ends_with('=') || prev.ends_with(':') {
            start -= 1;
        }
    }
    parse_int(&text[start..end])
}

pub fn check(p: &Problem, response: &str) -> Outcome {
    let format = check_format(response);
    let correct = match answer_part(response) {
        None => false,
        Some(ans) => match p.kind {
            Kind::Number => {
                let want = parse_int(&p.answer);
                want.is_some() && last_int(ans) == want
            }
            Kind::Countdown => countdown_ok(p, ans),
        },
    };
    Outcome { correct, format }
}

/// The answer's expression (left of any `=`, last line) uses each given number once and equals
/// the target.
fn countdown_ok(p: &Problem, ans: &str) -> bool {
    let line = ans
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let expr = line.split('=').next().unwrap_or("");
    let Some(target) = parse_int(&p.answer) else {
        return false;
    };
    match eval_expression(expr) {
        Some((value, mut used)) => {
            let mut given = p.numbers.clone();
            used.sort_unstable();
            given.sort_unstable();
            used == given && value.is_integer(target)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_integer_reads_signs_and_equations() {
        assert_eq!(last_int("482 + 739 = 1221"), Some(1221));
        assert_eq!(last_int("12 - 345 = -333"), Some(-333));
        assert_eq!(last_int("-5"), Some(-5));
        assert_eq!(last_int("7-5"), Some(5));
        assert_eq!(last_int("The answer is 1,221."), Some(1221));
        assert_eq!(last_int("none"), None);
    }
}
