//! Addition, subtraction and multiplication with digit-by-digit worked solutions: each line does
//! one column and carries the digits found so far, so the answer is a copy of the last line.

use crate::{Kind, Problem};
use rand::Rng;

fn number(rng: &mut impl Rng, digits: usize) -> i64 {
    let lo = if digits == 1 {
        0
    } else {
        10i64.pow(digits as u32 - 1)
    };
    rng.gen_range(lo..10i64.pow(digits as u32))
}

fn problem(a: i64, b: i64, op: char, answer: i64) -> Problem {
    Problem {
        question: format!("What is {a} {op} {b}?"),
        answer: answer.to_string(),
        numbers: vec![a, b],
        kind: Kind::Number,
    }
}

pub fn add(rng: &mut impl Rng, digits: usize) -> Problem {
    let (a, b) = (number(rng, digits), number(rng, digits));
    problem(a, b, '+', a + b)
}

pub fn sub(rng: &mut impl Rng, digits: usize) -> Problem {
    let (a, b) = (number(rng, digits), number(rng, digits));
    problem(a, b, '-', a - b)
}

/// `digits`-digit times 1-digit.
pub fn mul(rng: &mut impl Rng, digits: usize) -> Problem {
    let (a, b) = (number(rng, digits), rng.gen_range(2..10));
    problem(a, b, '*', a * b)
}

/// Decimal digits, least significant first, padded to `n`.
fn digits_lsf(x: i64, n: usize) -> Vec<i64> {
    let mut v: Vec<i64> = x
        .to_string()
        .bytes()
        .rev()
        .map(|b| (b - b'0') as i64)
        .collect();
    v.resize(n.max(v.len()), 0);
    v
}

fn finish(lines: Vec<String>, equation: String) -> String {
    format!("{}\n</think>\n\n{equation}", lines.join("\n"))
}

pub fn solve_add(a: i64, b: i64) -> String {
    let n = a.to_string().len().max(b.to_string().len());
    let (da, db) = (digits_lsf(a, n), digits_lsf(b, n));
    let (mut carry, mut so_far, mut lines) = (0, String::new(), vec![]);
    for i in 0..n {
        let s = da[i] + db[i] + carry;
        let sum = if carry > 0 {
            format!("{}+{}+{carry}={s}", da[i], db[i])
        } else {
            format!("{}+{}={s}", da[i], db[i])
        };
        carry = s / 10;
        if i + 1 == n {
            so_far = format!("{s}{so_far}");
            lines.push(format!("{sum}, digits {so_far}"));
        } else {
            so_far = format!("{}{so_far}", s % 10);
            lines.push(format!("{sum}, carry {carry}, digits {so_far}"));
        }
    }
    finish(lines, format!("{a} + {b} = {}", a + b))
}

pub fn solve_sub(a: i64, b: i64) -> String {
    let mut lines = vec![];
    let (big, small) = if a >= b { (a, b) } else { (b, a) };
    if a < b {
        lines.push(format!("{a} < {b}, so compute {b} - {a} and negate"));
    }
    let n = big.to_string().len();
    let (da, db) = (digits_lsf(big, n), digits_lsf(small, n));
    let (mut borrow, mut so_far) = (0, String::new());
    for i in 0..n {
        let top = da[i] - borrow;
        let top_text = if borrow > 0 {
            format!("{}-1", da[i])
        } else {
            da[i].to_string()
        };
        if top < db[i] {
            let d = top + 10 - db[i];
            so_far = format!("{d}{so_far}");
            lines.push(format!(
                "{top_text}-{} borrow, {}-{}={d}, digits {so_far}",
                db[i],
                top + 10,
                db[i]
            ));
            borrow = 1;
        } else {
            let d = top - db[i];
            so_far = format!("{d}{so_far}");
            lines.push(format!("{top_text}-{}={d}, digits {so_far}", db[i]));
            borrow = 0;
        }
    }
    let magnitude = big - small;
    if a < b {
        lines.push(format!(
            "so {b} - {a} = {magnitude}, negated {}",
            -magnitude
        ));
    } else if so_far.len() > 1 && so_far.starts_with('0') {
        lines.push(format!("drop leading zeros: {magnitude}"));
    }
    finish(lines, format!("{a} - {b} = {}", a - b))
}

pub fn solve_mul(a: i64, b: i64) -> String {
    let n = a.to_string().len();
    let da = digits_lsf(a, n);
    let (mut carry, mut so_far, mut lines) = (0, String::new(), vec![]);
    for (i, &d) in da.iter().enumerate() {
        let p = d * b + carry;
        let prod = if carry > 0 {
            format!("{d}*{b}+{carry}={p}")
        } else {
            format!("{d}*{b}={p}")
        };
        carry = p / 10;
        if i + 1 == n {
            so_far = format!("{p}{so_far}");
            lines.push(format!("{prod}, digits {so_far}"));
        } else {
            so_far = format!("{}{so_far}", p % 10);
            lines.push(format!("{prod}, carry {carry}, digits {so_far}"));
        }
    }
    let product = a * b;
    if so_far != product.to_string() {
        lines.push(format!("drop leading zeros: {product}"));
    }
    finish(lines, format!("{a} * {b} = {product}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_solutions_read_as_expected() {
        assert_eq!(
            solve_add(482, 739),
            "2+9=11, carry 1, digits 1\n8+3+1=12, carry 1, digits 21\n4+7+1=12, digits 1221\n</think>\n\n482 + 739 = 1221"
        );
        assert!(solve_sub(305, 7).contains("5-7 borrow, 15-7=8, digits 8"));
        assert!(solve_sub(12, 345).starts_with("12 < 345, so compute 345 - 12 and negate"));
        assert!(solve_mul(407, 3).ends_with("407 * 3 = 1221"));
    }
}
