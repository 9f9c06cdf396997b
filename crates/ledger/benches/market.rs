//! The market's computation per round for 10,000 participants (BENCHMARKS.md, Market):
//! each round's close (the answers replace the standing ones, the imbalance summed, the next
//! price) and the clearing at the end, as every validator runs them on each decided cut, and
//! the rounds discovery takes to reach one price unit. Medians of three runs.
//!
//! `cargo bench -p gridgate-ledger --bench market [-- --participants N]`

use std::time::{Duration, Instant};

use gridgate_ledger::market::{Answer, MarketTerms, Rounds, Schedule, State};

/// xorshift64*: the same participants every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A participant's blocks: (price, Wh); positive buys below the price, negative sells from
/// it up.
type Blocks = Vec<(i64, i64)>;

fn answer(blocks: &Blocks, p: i64) -> i64 {
    blocks
        .iter()
        .map(|&(price, wh)| match wh {
            w if w > 0 && p < price => w,
            w if w < 0 && p >= price => w,
            _ => 0,
        })
        .sum()
}

struct Run {
    rounds: u32,
    per_round: Vec<Duration>,
    clearing: Duration,
    price: i64,
}

fn run(participants: &[(String, Blocks)]) -> Run {
    let terms = MarketTerms {
        floor: 400,
        cap: 1_200,
        tolerance_wh: 0,
        max_rounds: 64,
    };
    let schedule = Schedule {
        interval_ms: 900_000,
        lead_ms: 3_600_000,
        gate_ms: 300_000,
        round_ms: 1_000,
    };
    let start = 1_800_000_000_000;
    let mut r = Rounds::new(terms, schedule, start);
    let mut t = schedule.opens(start);
    let mut height = 1;
    r.on_cut(height, t, Vec::new());
    let mut per_round = Vec::new();
    let mut clearing = Duration::ZERO;
    while let State::Open { round, price, .. } = *r.state() {
        let answers: Vec<Answer> = participants
            .iter()
            .map(|(m, b)| Answer {
                member: m.clone(),
                round,
                price,
                quantity_wh: answer(b, price),
            })
            .collect();
        height += 1;
        t += 1_000;
        let began = Instant::now();
        r.on_cut(height, t, answers);
        let took = began.elapsed();
        if matches!(r.state(), State::Final(_)) {
            clearing = took;
        } else {
            per_round.push(took);
        }
    }
    let State::Final(f) = r.state() else {
        panic!("discovery did not end: {:?}", r.state());
    };
    Run {
        rounds: r.history().len() as u32,
        per_round,
        clearing,
        price: f.clearing.price,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let mut args = std::env::args()
        .skip_while(|a| a != "--participants")
        .skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let participants: Vec<(String, Blocks)> = (0..n)
        .map(|i| {
            let blocks = (0..=rng.below(3))
                .map(|_| {
                    let price = 401 + rng.below(798) as i64;
                    let wh = 100 + rng.below(4_900) as i64;
                    (price, if rng.below(2) == 0 { wh } else { -wh })
                })
                .collect();
            (format!("gw-{i:05}"), blocks)
        })
        .collect();
    let runs: Vec<Run> = (0..3).map(|_| run(&participants)).collect();
    let rounds = runs[0].rounds;
    assert!(
        runs.iter()
            .all(|r| r.rounds == rounds && r.price == runs[0].price)
    );
    let round = median(runs.iter().map(|r| median(r.per_round.clone())).collect());
    let worst = median(
        runs.iter()
            .map(|r| r.per_round.iter().max().copied().unwrap_or_default())
            .collect(),
    );
    let clearing = median(runs.iter().map(|r| r.clearing).collect());
    println!("market computation, {n} participants (medians of 3 runs):");
    println!(
        "  rounds to one price unit: {rounds} (range 800 units; the bound is ceil(log2 800) + 2 = 12)"
    );
    println!("  final price: {} milli/kWh", runs[0].price);
    println!(
        "  a round's close: median {:.2} ms, slowest {:.2} ms (target < 100 ms)",
        round.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
    println!(
        "  the last round's close with the clearing: {:.2} ms",
        clearing.as_secs_f64() * 1e3
    );
    // One line per figure for scripts/bench.sh: figure, value, unit, which way is better,
    // the limit measured in the same run, the ratio to it, the target ("-": none).
    println!(
        "result\tmarket.round_ms\t{:.2}\tms\tlower\t-\t-\tvalue<100",
        round.as_secs_f64() * 1e3
    );
    println!("result\tmarket.rounds\t{rounds}\trounds\tlower\t-\t-\tvalue<20");
}
