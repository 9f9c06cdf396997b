//! Frame encode/decode, value decoding and the Modbus read planner.
//!
//!     cargo bench -p gridgate-drivers --bench codec

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gridgate_drivers::dlt645::di::{DataId, decode_value};
use gridgate_drivers::dlt645::frame::{
    Address, Control, Decoded, Frame, decode, encode_into, func,
};
use gridgate_drivers::modbus::{DataType, PointSpec, Table, plan};

fn reply() -> Frame {
    Frame {
        address: Address::parse("000000000001").unwrap_or(Address::WILDCARD),
        control: Control::reply(func::READ_DATA, false),
        data: vec![0x00, 0x00, 0x01, 0x00, 0x67, 0x45, 0x23, 0x01],
    }
}

fn frames(c: &mut Criterion) {
    let f = reply();
    let mut out = Vec::with_capacity(64);
    c.bench_function("dlt645 encode reply (4 FE)", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(&f), 4, &mut out).ok();
            black_box(out.len())
        })
    });
    let mut wire = Vec::new();
    encode_into(&f, 4, &mut wire).ok();
    c.bench_function("dlt645 decode reply (4 FE)", |b| {
        b.iter(|| match decode(black_box(&wire)) {
            Decoded::Frame { consumed, .. } => consumed,
            _ => 0,
        })
    });
    let mut noisy = vec![0x01, 0x68, 0x02, 0x68, 0x99];
    noisy.extend_from_slice(&wire);
    c.bench_function("dlt645 resync past garbage then decode", |b| {
        b.iter(|| {
            let mut pos = 0;
            loop {
                match decode(black_box(&noisy[pos..])) {
                    Decoded::Frame { consumed, .. } => break pos + consumed,
                    Decoded::Skip { consumed, .. } => pos += consumed,
                    Decoded::NeedMore => break pos,
                }
            }
        })
    });
    c.bench_function("dlt645 decode value 00010000", |b| {
        b.iter(|| decode_value(DataId(0x0001_0000), black_box(&[0x67, 0x45, 0x23, 0x01])))
    });
}

fn planner(c: &mut Criterion) {
    // A device with 1,000 points over four tables, addresses spread with gaps.
    let points: Vec<PointSpec> = (0..1000u16)
        .map(|i| {
            let (table, ty) = match i % 4 {
                0 => (Table::Coil, DataType::Bool),
                1 => (Table::DiscreteInput, DataType::Bool),
                2 => (Table::InputRegister, DataType::F32),
                _ => (Table::HoldingRegister, DataType::U16),
            };
            PointSpec::new(table, i * 3 + (i % 7), ty)
        })
        .collect();
    c.bench_function("modbus plan 1000 points", |b| {
        b.iter(|| plan(black_box(&points), 8).len())
    });
    let small = &points[..40];
    c.bench_function("modbus plan 40 points", |b| {
        b.iter(|| plan(black_box(small), 8).len())
    });
}

criterion_group!(benches, frames, planner);
criterion_main!(benches);
