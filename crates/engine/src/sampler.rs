//! Next-token choice from logits: greedy, or temperature with top-k, top-p and min-p filters,
//! from a seeded generator so a seed reproduces a sample. Penalties and logit biases shift the
//! logits first, as OpenAI and vLLM define them.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy
    pub temperature: f32,
    /// 0 means off
    pub top_k: usize,
    /// 1 means off
    pub top_p: f32,
    /// 0 means off
    pub min_p: f32,
    pub seed: Option<u64>,
    /// OpenAI's: subtracted once from every token already generated (0 means off)
    pub presence_penalty: f32,
    /// OpenAI's: subtracted per occurrence in the generated tokens (0 means off)
    pub frequency_penalty: f32,
    /// vLLM / transformers': a token of the prompt or the output has a positive logit divided
    /// by it and a negative one multiplied (1 means off)
    pub repetition_penalty: f32,
    /// OpenAI's `logit_bias`: added to a token's logit (-100 bans it, 100 all but forces it)
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: vec![],
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("min_p must be in [0, 1], got {}", self.min_p);
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                bail!("{name} must be in [-2, 2], got {v}");
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 2.0) {
            bail!(
                "repetition_penalty must be in (0, 2], got {}",
                self.repetition_penalty
            );
        }
        if let Some((t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            bail!("logit_bias for token {t} must be in [-100, 100], got {b}");
        }
        Ok(())
    }

    /// Whether any penalty or bias changes the logits.
    fn shifts_logits(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// how often each token was generated, and the prompt's tokens (for the penalties)
    generated: HashMap<u32, u32>,
    prompt: HashSet<u32>,
}

/// The first position of the largest logit (the kernels' vectorised scan).
pub fn argmax(v: &[f32]) -> u32 {
    whale_kernels::ops::argmax(v) as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Sampler {
            params,
            rng,
            generated: HashMap::new(),
            prompt: HashSet::new(),
        }
    }

    /// As `new`, for a sequence that continues `prompt` (the repetition penalty counts it).
    pub fn for_prompt(params: SamplingParams, prompt: &[u32]) -> Self {
        let mut s = Self::new(params);
        if s.params.repetition_penalty != 1.0 {
            s.prompt.extend(prompt.iter().copied());
        }
        s
    }

    /// The logits after penalties and biases.
    pub fn shifted<'a>(&self, logits: &'a [f32]) -> Cow<'a, [f32]> {
        let p = &self.params;
        if !p.shifts_logits() {
            return Cow::Borrowed(logits);
        }
        let mut l = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &t in self.prompt.iter().chain(self.generated.keys()) {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / r } else { *x * r };
                }
            }
            // a token in both sets was penalised twice; undo one
            for &t in self.generated.keys().filter(|t| self.prompt.contains(t)) {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x * r } else { *x / r };
                }
            }
        }
        for (&t, &n) in &self.generated {
            if let Some(x) = l.get_mut(t as usize) {
                *x -= p.frequency_penalty * n as f32 + p.presence_penalty;
            }
        }
        for &(t, b) in &p.logit_bias {
            if let Some(x) = l.get_mut(t as usize) {
                *x += b;
            }
        }
        Cow::Owned(l)
    }

    /// Candidates after temperature and the filters: (token, probability), probabilities
    /// renormalised, most likely first.
    pub fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = &self.params;
        let t = p.temperature.max(1e-6);
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let m = c[0].1;
        let mut sum = 0f32;
        for x in c.iter_mut() {
            x.1 = (x.1 - m).exp();
            sum += x.1;
        }
        for x in c.iter_mut() {
            x.1 /= sum;
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * c[0].1;
            c.retain(|x| x.1 >= floor);
        }
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += x.1;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        let s: f32 = c.iter().map(|x| x.1).sum();
        for x in c.iter_mut() {
            x.1 /= s;
        }
        c
    }

    /// The next token; it counts as generated for the penalties of later calls.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let logits = self.shifted(logits);
        let tok = self.choose(&logits);
        if self.params.shifts_logits() {
            *self.generated.entry(tok).or_default() += 1;
        }
        tok
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let c = self.candidates(logits);
        let mut u: f32 = self.rng.gen();
        for &(id, p) in &c {
            if u < p {
                return id;
            }
            u -= p;
        }
        c.last().map(|x| x.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn argmax_is_the_first_position_of_the_largest() {
        for n in [1usize, 15, 16, 17, 100, 1000] {
            for seed in 0..5u32 {
                // few distinct values, so the maximum is tied at several places
                let v: Vec<f32> = (0..n as u32)
                    .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 7) as f32 - 3.0)
                    .collect();
                let mut want = 0;
                for (i, &x) in v.iter().enumerate() {
                    if x > v[want] {
                        want = i;
                    }
                }
                assert_eq!(argmax(&v), want as u32, "n {n} seed {seed}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
    }

    #[test]
    fn filters_cut_the_tail() {
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        let mut p = params(1.0);
        p.top_k = 2;
        assert_eq!(Sampler::new(p).candidates(&logits).len(), 2);
        let mut p = params(1.0);
        p.top_p = 0.5; // first token alone has ~0.64
        assert_eq!(Sampler::new(p).candidates(&logits).len(), 1);
        let mut p = params(1.0);
        p.min_p = 0.3; // e^-1 = 0.37 of the top survives, e^-2 = 0.14 does not
        assert_eq!(Sampler::new(p).candidates(&logits).len(), 2);
    }

    #[test]
    fn same_seed_same_samples_and_frequencies_follow_probabilities() {
        let logits = [1.0f32, 1.0 + (3f32).ln()]; // p = 0.25, 0.75
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            });
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        let ones = draw(2).iter().filter(|&&x| x == 1).count() as f32 / 4000.0;
        // binomial sd = sqrt(.75*.25/4000) = 0.0068; 5 sd
        assert!((ones - 0.75).abs() < 0.035, "{ones}");
    }

    #[test]
    fn penalties_and_biases_shift_the_logits_as_specified() {
        let mut s = Sampler::for_prompt(
            SamplingParams {
                presence_penalty: 0.5,
                frequency_penalty: 0.25,
                repetition_penalty: 2.0,
                logit_bias: vec![(3, -100.0), (0, 1.5)],
                ..Default::default()
            },
            &[2],
        );
        s.generated.insert(1, 2);
        let l = s.shifted(&[1.0, 4.0, -1.0, 9.0, 0.5]);
        // 0: bias; 1: generated twice, positive, /2 then -0.5 - 2*0.25; 2: prompt, negative, *2;
        // 3: banned; 4: untouched
        assert_eq!(&l[..], &[2.5, 1.0, -2.0, -91.0, 0.5]);
        // greedy follows the shifted logits, and counts what it picks
        let mut g = Sampler::new(SamplingParams {
            frequency_penalty: 2.0,
            ..Default::default()
        });
        let logits = [3.0f32, 2.0];
        assert_eq!(
            (0..4).map(|_| g.sample(&logits)).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
    }

    #[test]
    fn bad_params_are_rejected() {
        let mut p = params(-1.0);
        assert!(p.validate().is_err());
        p.temperature = 1.0;
        p.top_p = 0.0;
        assert!(p.validate().is_err());
    }
}
