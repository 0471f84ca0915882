//! The context cache on disk: written while serving (so a crash loses little), read back by
//! the next server, and when damaged, skipped record by record so answers stay those of a
//! server with no cache at all.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn cached(dir: &Path) -> String {
    serve(&whale_server::Options {
        port: 0,
        cache_mem: 8 << 20,
        block_size: 4,
        context_cache_dir: Some(dir.to_path_buf()),
        context_cache_flush: Some(Duration::from_millis(50)),
        ..whale_server::Options::new(fixture())
    })
}

fn conversation() -> Value {
    let system = "You are a careful assistant who answers arithmetic questions briefly.";
    json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "What is 12 + 30?"}], "max_tokens": 12, "temperature": 0, "ignore_eos": true})
}

fn answer(addr: &str) -> (String, u64) {
    let (s, v) = post(addr, "/v1/chat/completions", &conversation());
    assert_eq!(s, 200, "{v}");
    let m = &v["choices"][0]["message"];
    let text = format!("{}|{}", m["reasoning_content"], m["content"]);
    (
        text,
        v["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap(),
    )
}

/// Waits for the server to write its cache file with `blocks` or more records.
fn written(file: &Path, at_least: u64) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = std::fs::read(file) {
            if b.len() >= 72 && u64::from_le_bytes(b[56..64].try_into().unwrap()) >= at_least {
                return b;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_damaged_cache_file_is_skipped_and_answers_stay_right() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prefix-cache.bin");
    let uncached = start(None, None, 8 << 20);
    let (want, _) = answer(&uncached);
    // a server writes its prefixes while it serves, not only when it stops
    let first = cached(tmp.path());
    assert_eq!(answer(&first).0, want);
    let good = written(&file, 4);
    // a second server reads them back and hits them
    let (got, hit) = answer(&cached(tmp.path()));
    assert_eq!(got, want);
    assert!(hit >= 16, "hit {hit}");
    // every record's rows damaged in place (same size: scaled, NaN, random): nothing is used
    let header = 72;
    let n = u64::from_le_bytes(good[56..64].try_into().unwrap()) as usize;
    let rec = (good.len() - header) / n;
    for damage in 0..3 {
        let mut bad = good.clone();
        for r in 0..n {
            let rows = &mut bad[header + r * rec + 16..header + (r + 1) * rec];
            for (i, c) in rows.chunks_exact_mut(4).enumerate() {
                let x = f32::from_le_bytes(c.try_into().unwrap());
                let y = match damage {
                    0 => x * 1.5,
                    1 => f32::NAN,
                    _ => (i as f32 * 0.37).sin(),
                };
                c.copy_from_slice(&y.to_le_bytes());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prefix-cache.bin"), &bad).unwrap();
        let (got, hit) = answer(&cached(dir.path()));
        assert_eq!(got, want, "damage {damage}");
        assert_eq!(hit, 0, "damage {damage}: a damaged block was used");
    }
    // a crafted record count and a truncated file: no panic, answers right
    for bytes in [
        {
            let mut b = good.clone();
            b[56..64].copy_from_slice(&(u64::MAX / rec as u64 + 2).to_le_bytes());
            b
        },
        good[..good.len() / 2].to_vec(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prefix-cache.bin"), &bytes).unwrap();
        let addr = cached(dir.path());
        assert_eq!(answer(&addr).0, want);
        assert_eq!(http(&addr, "GET", "/health", b"", &[]).0, 200);
    }
}
