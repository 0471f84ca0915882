//! Self-consistency over `n` samples (`whale_vote: true`, an extension field): each final answer
//! is reduced to a key — the content of the last `\boxed{...}`, else the last number, else the
//! trimmed text — and the most common key wins (ties: the one reached first).

use serde_json::{json, Value};

pub fn answer_key(text: &str) -> String {
    if let Some(i) = text.rfind("\\boxed{") {
        let rest = &text[i + 7..];
        let mut depth = 1;
        for (j, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return rest[..j].trim().to_string();
                    }
                }
                _ => {}
            }
        }
    }
    let mut last = None;
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit()
            || (c == '-' && cur.is_empty())
            || (c == '.' && !cur.is_empty() && !cur.contains('.'))
        {
            cur.push(c);
        } else {
            let t = cur.trim_end_matches('.').to_string();
            if t.chars().any(|c| c.is_ascii_digit()) {
                last = Some(t);
            }
            cur.clear();
        }
    }
    last.unwrap_or_else(|| text.trim().to_string())
}

pub fn majority(answers: &[&str]) -> Value {
    let keys: Vec<String> = answers.iter().map(|a| answer_key(a)).collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for k in &keys {
        match counts.iter_mut().find(|(c, _)| c == k) {
            Some(e) => e.1 += 1,
            None => counts.push((k.clone(), 1)),
        }
    }
    let best = counts
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(std::cmp::Ordering::Greater))
        .cloned();
    let (answer, _) = best.unwrap_or_default();
    let index = keys.iter().position(|k| *k == answer);
    json!({
        "answer": answer,
        "choice_index": index,
        "votes": counts.iter().map(|(k, c)| json!({"answer": k, "count": c})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_majority() {
        assert_eq!(answer_key("so \\boxed{42} done"), "42");
        assert_eq!(answer_key("The answer is 12, no 13."), "13");
        assert_eq!(answer_key("  yes "), "yes");
        let v = majority(&["it is 5", "\\boxed{7}", "7", "maybe 5", "5!"]);
        assert_eq!(v["answer"], "5");
        assert_eq!(v["choice_index"], 0);
        assert_eq!(v["votes"][0]["count"], 3);
    }
}
