//! The product kernels against the portable reference, and the reference
//! against the decoded weights, on random blocks of every format.

use super::blocks::BlockFormat;
use super::dot::{Isa, Q8Acts, dot, dot_portable};
use super::matrix::{QuantMatrix, SharedBytes};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Formats with a product kernel.
fn kernel_formats() -> Vec<BlockFormat> {
    BlockFormat::ALL
        .into_iter()
        .filter(|f| f.has_kernel())
        .collect()
}

fn f16_bits(x: f32) -> u16 {
    half_bits(x)
}

/// f32 → IEEE half bits for the exactly representable values these tests use.
fn half_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} is not a normal f16");
    let mant = ((b >> 13) & 0x3ff) as u16;
    assert_eq!(b & 0x1fff, 0, "{x} is not exact in f16");
    sign | ((exp as u16) << 10) | mant
}

/// One random row of `cols` elements. `exact` keeps scales powers of two
/// and values small, so every product and sum the kernels form is exact in
/// f32 whatever their order.
fn random_row(format: BlockFormat, cols: usize, rng: &mut ChaCha8Rng, exact: bool) -> Vec<u8> {
    let mut row = vec![0u8; format.row_bytes(cols).unwrap()];
    rng.fill_bytes(&mut row);
    let scale = |rng: &mut ChaCha8Rng, min: bool| -> u16 {
        if exact {
            f16_bits(if min { 1.0 / 32.0 } else { 1.0 / 16.0 })
        } else {
            let v: f32 = rng.random_range(0.001..0.2);
            f16_bits(round_f16(if min && rng.random_bool(0.5) { -v } else { v }))
        }
    };
    let put = |row: &mut [u8], at: usize, h: u16| row[at..at + 2].copy_from_slice(&h.to_le_bytes());
    match format {
        BlockFormat::F16 | BlockFormat::BF16 => {
            for e in row.chunks_exact_mut(2) {
                let v = if exact {
                    rng.random_range(-16i32..=16) as f32 / 16.0
                } else {
                    round_f16(rng.random_range(-1.0f32..1.0))
                };
                let h = if format == BlockFormat::F16 {
                    f16_bits(v)
                } else {
                    (v.to_bits() >> 16) as u16
                };
                e.copy_from_slice(&h.to_le_bytes());
            }
        }
        _ => {
            for b in row.chunks_exact_mut(format.block_bytes()) {
                match format {
                    BlockFormat::Q8_0 | BlockFormat::Q4_0 | BlockFormat::Q5_0 => {
                        let d = scale(rng, false);
                        put(b, 0, d)
                    }
                    BlockFormat::Q4_1 | BlockFormat::Q5_1 => {
                        let (d, m) = (scale(rng, false), scale(rng, true));
                        put(b, 0, d);
                        put(b, 2, m);
                    }
                    BlockFormat::Q4_K | BlockFormat::Q5_K => {
                        let (d, m) = (scale(rng, false), scale(rng, true));
                        put(b, 0, d);
                        put(b, 2, m);
                    }
                    BlockFormat::Q6_K => {
                        let d = scale(rng, false);
                        put(b, 208, d)
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
    row
}

/// The nearest value an f16 holds (within its normal range).
fn round_f16(x: f32) -> f32 {
    if x.abs() < 1.0 / 16384.0 {
        return 0.0;
    }
    let b = x.to_bits();
    let r = (b + 0x1000) & !0x1fff;
    f32::from_bits(r)
}

fn random_acts(cols: usize, rng: &mut ChaCha8Rng, exact: bool) -> Vec<f32> {
    let mut x: Vec<f32> = (0..cols)
        .map(|_| {
            if exact {
                rng.random_range(-8i32..=8) as f32 / 64.0
            } else {
                rng.random_range(-2.0f32..2.0)
            }
        })
        .collect();
    if exact {
        // One ±127/64 per block: each block's scale is then exactly 1/64.
        for b in 0..cols / 32 {
            let i = 32 * b + rng.random_range(0..32);
            x[i] = if rng.random_bool(0.5) { 127.0 } else { -127.0 } / 64.0;
        }
    }
    x
}

fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

#[test]
fn every_path_agrees_bit_for_bit_where_the_arithmetic_is_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for format in kernel_formats() {
        // 800: an odd number of 32-blocks (the paired kernels' tail); F16
        // and BF16 rows of 808 end off their 16-wide steps.
        for cols in [256, 512, 768, 800, 808] {
            if format.row_bytes(cols).is_none() {
                continue;
            }
            for _ in 0..20 {
                let row = random_row(format, cols, &mut rng, true);
                let a = Q8Acts::new(&random_acts(cols, &mut rng, true));
                assert!(
                    a.d.iter().all(|&d| d == 1.0 / 64.0),
                    "exact activation scales"
                );
                let want = dot_portable(format, &row, &a);
                // The exact value, from the decoded weights in f64.
                let mut w = vec![0f32; cols];
                format.decode(&row, &mut w);
                let exact: f64 = (w.iter().zip(&a.x))
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                assert_eq!(
                    f64::from(want),
                    exact,
                    "{format}: portable vs the decoded weights"
                );
                for isa in available() {
                    let got = dot(isa, format, &row, &a);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{format} on {}: {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn every_path_matches_the_decoded_weights_on_random_blocks() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for format in kernel_formats() {
        for cols in [256, 2048] {
            for _ in 0..20 {
                let row = random_row(format, cols, &mut rng, false);
                let x = random_acts(cols, &mut rng, false);
                let a = Q8Acts::new(&x);
                let mut w = vec![0f32; cols];
                format.decode(&row, &mut w);
                // Against the quantised activations: only f32 rounding differs.
                let dq: Vec<f64> = (0..cols)
                    .map(|i| f64::from(a.d[i / 32]) * f64::from(a.q[i]))
                    .collect();
                let (exact, mag) = (w.iter().zip(&dq)).fold((0f64, 0f64), |(s, m), (&w, &x)| {
                    (s + f64::from(w) * x, m + (f64::from(w) * x).abs())
                });
                let xs = if matches!(format, BlockFormat::F16 | BlockFormat::BF16) {
                    x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()
                } else {
                    dq.clone()
                };
                let exact_x: f64 = (w.iter().zip(&xs)).map(|(&w, &x)| f64::from(w) * x).sum();
                for isa in available() {
                    let got = f64::from(dot(isa, format, &row, &a));
                    let want = if matches!(format, BlockFormat::F16 | BlockFormat::BF16) {
                        exact_x
                    } else {
                        exact
                    };
                    let bound = 1e-5 * mag.max(1e-3);
                    assert!(
                        (got - want).abs() <= bound,
                        "{format} on {}: {got} vs {want} (bound {bound})",
                        isa.name()
                    );
                }
                // Quantising the activations costs at most half a step per value.
                let full: f64 = (w.iter().zip(&x))
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                let step: f64 = (0..cols)
                    .map(|i| 0.5 * f64::from(a.d[i / 32]) * f64::from(w[i]).abs())
                    .sum();
                assert!(
                    (exact_x - full).abs() <= step + 1e-9,
                    "{format}: activation rounding"
                );
            }
        }
    }
}

#[test]
fn rounding_is_roundf_without_the_call() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut cases = vec![
        0.5f32,
        -0.5,
        1.5,
        -1.5,
        0.49999997,
        -0.49999997,
        126.5,
        -127.0,
        0.0,
        -0.0,
    ];
    cases.extend((0..100_000).map(|_| rng.random_range(-127.5f32..127.5)));
    for r in cases {
        assert_eq!(super::dot::round_away(r), r.round() as i32, "{r}");
    }
}

#[test]
fn activations_round_like_ggml() {
    let mut x = vec![0f32; 32];
    x[0] = 1.27;
    x[1] = -0.005; // -0.5 steps: rounds away from zero
    x[2] = 0.004;
    let a = Q8Acts::new(&x);
    assert_eq!(a.d[0], 1.27 / 127.0);
    assert_eq!((a.q[0], a.q[1], a.q[2]), (127, -1, 0));
    assert_eq!(a.sum[0], 126);
    assert_eq!(a.sum16, vec![126, 0]);
    // An all-zero block has scale zero and no NaN.
    let z = Q8Acts::new(&[0.0; 32]);
    assert_eq!((z.d[0], z.q[0]), (0.0, 0));
}

#[test]
fn matrices_join_slice_and_permute_rows_without_changing_them() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let a = random_row(BlockFormat::Q4_1, 64 * 3, &mut rng, false);
    let b = random_row(BlockFormat::Q8_0, 64 * 2, &mut rng, false);
    let ma = QuantMatrix::new(BlockFormat::Q4_1, &[3, 64], SharedBytes::from_vec(a)).unwrap();
    let mb = QuantMatrix::new(BlockFormat::Q8_0, &[2, 64], SharedBytes::from_vec(b)).unwrap();
    let j = QuantMatrix::join_rows(&[&ma, &mb]).unwrap();
    assert_eq!(
        (j.rows(), j.cols(), j.formats_text().as_str()),
        (5, 64, "Q4_1+Q8_0")
    );
    let dense = j.dequantize().unwrap();
    let d = dense.as_f32().unwrap();
    assert_eq!(&d[..192], ma.dequantize().unwrap().as_f32().unwrap());
    assert_eq!(&d[192..], mb.dequantize().unwrap().as_f32().unwrap());
    let s = j.slice_rows(2, 2).unwrap();
    assert_eq!(s.formats_text(), "Q4_1+Q8_0");
    assert_eq!(s.dequantize().unwrap().as_f32().unwrap(), &d[128..256]);
    let p = j.permute_rows(&[4, 0, 1, 3, 2]).unwrap();
    let pd = p.dequantize().unwrap();
    let pd = pd.as_f32().unwrap();
    for (i, &r) in [4, 0, 1, 3, 2].iter().enumerate() {
        assert_eq!(&pd[64 * i..64 * i + 64], &d[64 * r..64 * r + 64]);
    }
    assert!(
        QuantMatrix::new(
            BlockFormat::Q4_0,
            &[2, 48],
            SharedBytes::from_vec(vec![0; 54])
        )
        .is_err()
    );
    assert!(
        QuantMatrix::new(
            BlockFormat::Q4_0,
            &[2, 32],
            SharedBytes::from_vec(vec![0; 35])
        )
        .is_err()
    );
}

/// Every tile of `w` (rows × k) times `m` random activation rows: the
/// VNNI path equals the portable one bit for bit, and the portable one
/// equals (exact inputs) or is within f32 rounding of the f64 sum over the
/// decoded weights and the quantised activations.
fn check_packed(w: &QuantMatrix, m: usize, exact: bool, rng: &mut ChaCha8Rng) {
    use super::gemm::{PANEL_COLS, Panel, QRows, TILE_ROWS, tile, tile_portable};
    let (n, k) = (w.rows(), w.cols());
    let what = w.formats_text();
    let mut dense = vec![0f32; n * k];
    w.decode_rows(0..n, &mut dense);
    let mut a = QRows::new(k);
    let mut q8 = Vec::new();
    for _ in 0..m {
        let x = random_acts(k, rng, exact);
        a.push(&x);
        q8.push(Q8Acts::new(&x));
    }
    let mut panel = Panel::default();
    for j0 in (0..n).step_by(PANEL_COLS) {
        let j1 = (j0 + PANEL_COLS).min(n);
        assert!(panel.pack(w, j0, j1), "{what} packs");
        for r0 in (0..m).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(m - r0);
            let mut want = vec![[0f32; PANEL_COLS]; rows];
            tile_portable(&panel, &a, r0, &mut want);
            if super::gemm::available() {
                let mut got = vec![[f32::NAN; PANEL_COLS]; rows];
                tile(&panel, &a, r0, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    let gb: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
                    let wb: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(gb, wb, "{what} k={k}: VNNI vs portable");
                }
            }
            for (r, row) in want.iter().enumerate() {
                let acts = &q8[r0 + r];
                for (c, &got) in row.iter().enumerate() {
                    if j0 + c >= j1 {
                        assert_eq!(got, 0.0, "padding columns stay zero");
                        continue;
                    }
                    let wr = &dense[(j0 + c) * k..(j0 + c + 1) * k];
                    let (e, mag) = (0..k).fold((0f64, 0f64), |(s, mg), t| {
                        let v = f64::from(wr[t]) * f64::from(acts.d[t / 32]) * f64::from(acts.q[t]);
                        (s + v, mg + v.abs())
                    });
                    let got = f64::from(got);
                    if exact {
                        assert_eq!(got, e, "{what}: exact inputs give the exact sum");
                    } else {
                        assert!(
                            (got - e).abs() <= 1e-5 * mag.max(1e-3),
                            "{what} k={k} ({r}, {c}): {got} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

fn random_matrix(
    format: BlockFormat,
    n: usize,
    k: usize,
    exact: bool,
    rng: &mut ChaCha8Rng,
) -> QuantMatrix {
    let mut bytes = Vec::new();
    for _ in 0..n {
        bytes.extend(random_row(format, k, rng, exact));
    }
    QuantMatrix::new(format, &[n, k], SharedBytes::from_vec(bytes)).unwrap()
}

#[test]
fn packed_products_agree_with_the_reference_bit_for_bit_and_with_the_decoded_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for format in BlockFormat::ALL {
        if super::gemm::sub_block_len(format).is_none() {
            continue;
        }
        for (k, exact) in [(256, true), (768, false), (512, false)] {
            let w = random_matrix(format, 37, k, exact, &mut rng);
            check_packed(&w, 7, exact, &mut rng);
        }
    }
    // A joined projection of mixed formats (Q4_K_M files: Q6_K beside
    // Q4_K), panels straddling the formats.
    for exact in [true, false] {
        let parts = [
            random_matrix(BlockFormat::Q4_K, 20, 512, exact, &mut rng),
            random_matrix(BlockFormat::Q6_K, 20, 512, exact, &mut rng),
            random_matrix(BlockFormat::Q4_1, 9, 512, exact, &mut rng),
        ];
        let w = QuantMatrix::join_rows(&[&parts[0], &parts[1], &parts[2]]).unwrap();
        check_packed(&w, 6, exact, &mut rng);
    }
}

#[test]
fn f16_rows_decode_every_bit_pattern_like_the_scalar_conversion() {
    // 65536 values (a whole number of 16-wide steps) plus a 7-value tail.
    let mut bits: Vec<u16> = (0..=u16::MAX).collect();
    bits.extend([0x3c00, 0x0001, 0x8001, 0x7bff, 0xfc00, 0x7e00, 0x0400]);
    let bytes: Vec<u8> = bits.iter().flat_map(|h| h.to_le_bytes()).collect();
    let mut out = vec![0f32; bits.len()];
    BlockFormat::F16.decode(&bytes, &mut out);
    for (&h, &v) in bits.iter().zip(&out) {
        let want = super::blocks::f16_to_f32(h);
        assert!(
            v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()),
            "{h:#06x}: {v} vs {want}"
        );
    }
}

#[test]
fn the_vector_quantiser_matches_the_scalar_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for len in [32, 64, 96, 800, 808] {
        for case in 0..50 {
            let mut x: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            if case % 2 == 0 {
                // Ties: with one ±127 per block the scale is 1, so k + 0.5
                // values land exactly on the rounding boundary.
                for (i, v) in x.iter_mut().enumerate() {
                    *v = if i % 32 == 0 {
                        127.0
                    } else {
                        (rng.random_range(-250i32..250) as f32) / 2.0
                    };
                }
            }
            if case == 1 {
                x.iter_mut().take(32).for_each(|v| *v = 0.0);
            }
            let fast = Q8Acts::new(&x);
            let slow = Q8Acts::new_scalar(&x);
            assert_eq!(fast.q, slow.q, "len {len} case {case}");
            assert_eq!(fast.d, slow.d);
            assert_eq!(
                (&fast.sum, &fast.sum16, &fast.sum8),
                (&slow.sum, &slow.sum16, &slow.sum8)
            );
            assert_eq!(fast.dsum, slow.dsum);
        }
    }
}

#[test]
fn activation_rows_fill_in_parallel_as_pushed_one_by_one() {
    use super::gemm::{PANEL_COLS, Panel, QRows, tile_portable};
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let k = 256;
    let rows: Vec<Vec<f32>> = (0..11).map(|_| random_acts(k, &mut rng, false)).collect();
    let mut one = QRows::new(k);
    for r in &rows {
        one.push(r);
    }
    let mut par = QRows::new(k);
    par.fill_parallel(rows.len(), |t, x| {
        x.clear();
        x.extend_from_slice(&rows[t]);
    });
    assert_eq!(par.rows(), one.rows());
    // Same products from either (Q4_1: scales, minima and offsets all used).
    let w = random_matrix(BlockFormat::Q4_1, 32, k, false, &mut rng);
    let mut p = Panel::default();
    assert!(p.pack(&w, 0, 32));
    for r0 in [0, 4, 8] {
        let n = 4.min(rows.len() - r0);
        let (mut a, mut b) = (vec![[0f32; PANEL_COLS]; n], vec![[0f32; PANEL_COLS]; n]);
        tile_portable(&p, &one, r0, &mut a);
        tile_portable(&p, &par, r0, &mut b);
        assert_eq!(a, b);
    }
}

#[test]
fn rows_walk_the_segments_like_row_lookups() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let parts = [
        random_matrix(BlockFormat::Q4_1, 5, 64, false, &mut rng),
        random_matrix(BlockFormat::Q8_0, 3, 64, false, &mut rng),
        random_matrix(BlockFormat::F16, 4, 64, false, &mut rng),
    ];
    let w = QuantMatrix::join_rows(&[&parts[0], &parts[1], &parts[2]]).unwrap();
    for range in [0..12, 3..9, 5..8, 11..12, 4..4] {
        let mut seen = Vec::new();
        w.for_each_row(range.clone(), |j, f, r| {
            let (f2, r2) = w.row(j);
            assert_eq!((f, r.as_ptr(), r.len()), (f2, r2.as_ptr(), r2.len()));
            seen.push(j);
        });
        assert_eq!(seen, range.collect::<Vec<_>>());
    }
}
