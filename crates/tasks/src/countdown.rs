//! Countdown: reach a target with the given numbers, each used once, with + - * / (exact division
//! only). Problems are made by combining the numbers at random, so every target is reachable.

use crate::{Kind, Problem};
use rand::seq::SliceRandom;
use rand::Rng;

pub fn generate(rng: &mut impl Rng, count: usize) -> Problem {
    loop {
        let numbers: Vec<i64> = (0..count).map(|_| rng.gen_range(1..=20)).collect();
        if let Some(target) = random_solution(rng, &numbers) {
            if (1..=200).contains(&target) && !numbers.contains(&target) {
                return Problem {
                    question: question(&numbers, target),
                    answer: target.to_string(),
                    numbers,
                    kind: Kind::Countdown,
                };
            }
        }
    }
}

fn question(numbers: &[i64], target: i64) -> String {
    let list: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
    format!(
        "Using the numbers {}, make {target}. Use each number once with + - * /.",
        list.join(", ")
    )
}

/// The numbers listed before "make" in a Countdown question (empty for other questions).
pub fn question_numbers(q: &str) -> Vec<i64> {
    let Some(rest) = q.trim_start().strip_prefix("Using the numbers") else {
        return vec![];
    };
    let list = rest.split("make").next().unwrap_or("");
    list.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Combines the numbers pairwise at random (positive integer intermediates); returns the value.
fn random_solution(rng: &mut impl Rng, numbers: &[i64]) -> Option<i64> {
    // each pool entry: (value, expression text)
    let mut pool: Vec<(i64, String)> = numbers.iter().map(|&n| (n, n.to_string())).collect();
    while pool.len() > 1 {
        pool.shuffle(rng);
        let (b, a) = (pool.pop().unwrap(), pool.pop().unwrap());
        let ops: Vec<char> = ['+', '-', '*', '/']
            .into_iter()
            .filter(|&op| match op {
                '-' => a.0 > b.0,
                '/' => b.0 > 1 && a.0 % b.0 == 0,
                '*' => a.0 * b.0 <= 1000,
                _ => true,
            })
            .collect();
        let op = *ops.choose(rng)?;
        let v = match op {
            '+' => a.0 + b.0,
            '-' => a.0 - b.0,
            '*' => a.0 * b.0,
            _ => a.0 / b.0,
        };
        let wrap = |s: &str| {
            if s.contains(' ') {
                format!("({s})")
            } else {
                s.to_string()
            }
        };
        pool.push((v, format!("{} {op} {}", wrap(&a.1), wrap(&b.1))));
    }
    Some(pool[0].0)
}

/// Worked solution: the steps of the first combination a fixed-order search finds, then the
/// expression.
pub fn solve(p: &Problem) -> String {
    let target: i64 = p.answer.parse().unwrap_or(0);
    let pool: Vec<(i64, String)> = p.numbers.iter().map(|&n| (n, n.to_string())).collect();
    let mut steps: Vec<Step> = vec![];
    let mut lines = vec![format!("numbers {:?}, target {target}", p.numbers)];
    let expr = if dfs(&pool, target, &mut steps) {
        for (a, op, b, v, _) in &steps {
            lines.push(format!("{a} {op} {b} = {v}"));
        }
        steps.last().map(|s| s.4.clone()).unwrap_or_default()
    } else {
        lines.push("no combination reaches it".into());
        "none".into()
    };
    format!("{}\n</think>\n\n{expr} = {target}", lines.join("\n"))
}

/// (left value, op, right value, result, expression so far)
type Step = (String, char, String, i64, String);

fn dfs(pool: &[(i64, String)], target: i64, steps: &mut Vec<Step>) -> bool {
    if pool.len() == 1 {
        return pool[0].0 == target;
    }
    for i in 0..pool.len() {
        for j in 0..pool.len() {
            if i == j {
                continue;
            }
            let (a, b) = (&pool[i], &pool[j]);
            for op in ['+', '-', '*', '/'] {
                let v = match op {
                    '+' if i < j => a.0 + b.0,
                    '*' if i < j => a.0 * b.0,
                    '-' if a.0 > b.0 => a.0 - b.0,
                    '/' if b.0 > 1 && a.0 % b.0 == 0 => a.0 / b.0,
                    _ => continue,
                };
                let wrap = |s: &str| {
                    if s.contains(' ') {
                        format!("({s})")
                    } else {
                        s.to_string()
                    }
                };
                let text = format!("{} {op} {}", wrap(&a.1), wrap(&b.1));
                let mut next: Vec<(i64, String)> = pool
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| k != i && k != j)
                    .map(|(_, x)| x.clone())
                    .collect();
                next.push((v, text.clone()));
                steps.push((a.0.to_string(), op, b.0.to_string(), v, text));
                if dfs(&next, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
    }
    false
}

/// An exact fraction (numerator, denominator > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rational(pub i128, pub i128);

impl Rational {
    fn norm(n: i128, d: i128) -> Option<Self> {
        if d == 0 {
            return None;
        }
        let g = gcd(n.abs(), d.abs()).max(1);
        let s = if d < 0 { -1 } else { 1 };
        Some(Rational(s * n / g, s * d / g))
    }
    pub fn is_integer(&self, v: i64) -> bool {
        self.1 == 1 && self.0 == v as i128
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Evaluates an expression of integers, + - * / and parentheses exactly; returns its value and
/// the integers it used. None on a syntax error or a division by zero.
pub fn eval_expression(s: &str) -> Option<(Rational, Vec<i64>)> {
    let toks: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    let mut p = Parser {
        t: &toks,
        i: 0,
        used: vec![],
    };
    let v = p.expr()?;
    (p.i == toks.len() && !toks.is_empty()).then_some((v, p.used))
}

struct Parser<'a> {
    t: &'a [char],
    i: usize,
    used: Vec<i64>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.t.get(self.i).copied()
    }
    fn expr(&mut self) -> Option<Rational> {
        let mut v = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let r = self.term()?;
            v = if op == '+' {
                Rational::norm(v.0 * r.1 + r.0 * v.1, v.1 * r.1)?
            } else {
                Rational::norm(v.0 * r.1 - r.0 * v.1, v.1 * r.1)?
            };
        }
        Some(v)
    }
    fn term(&mut self) -> Option<Rational> {
        let mut v = self.atom()?;
        while let Some(op @ ('*' | '/' | '×' | '÷')) = self.peek() {
            self.i += 1;
            let r = self.atom()?;
            v = if op == '*' || op == '×' {
                Rational::norm(v.0 * r.0, v.1 * r.1)?
            } else {
                Rational::norm(v.0 * r.1, v.1 * r.0)?
            };
        }
        Some(v)
    }
    fn atom(&mut self) -> Option<Rational> {
        match self.peek()? {
            '(' => {
                self.i += 1;
                let v = self.expr()?;
                (self.peek()? == ')').then_some(())?;
                self.i += 1;
                Some(v)
            }
            c if c.is_ascii_digit() => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                let text: String = self.t[start..self.i].iter().collect();
                let n: i64 = text.parse().ok().filter(|_| text.len() <= 12)?;
                self.used.push(n);
                Some(Rational(n as i128, 1))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_evaluate_exactly() {
        let (v, used) = eval_expression("(25 - 7) * 3").unwrap();
        assert!(v.is_integer(54));
        assert_eq!(used, vec![25, 7, 3]);
        assert!(eval_expression("7 / 2 * 2").unwrap().0.is_integer(7));
        assert!(eval_expression("1 / 0").is_none());
        assert!(eval_expression("3 +").is_none());
        assert!(eval_expression("").is_none());
        assert_eq!(
            question_numbers("Using the numbers 3, 7, 25, make 82. Use each"),
            vec![3, 7, 25]
        );
    }
}
