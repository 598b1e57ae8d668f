use super::*;
use kiln_runtime::quant::blocks::scale_min_k4;

#[path = "fixtures.rs"]
mod fixtures;

/// f16 bit patterns of a few exact values.
const H_ONE: u16 = 0x3c00; // 1.0
const H_HALF: u16 = 0x3800; // 0.5
const H_TWO: u16 = 0x4000; // 2.0
const H_NEG_QUARTER: u16 = 0xb400; // -0.25

fn le(h: u16) -> [u8; 2] {
    h.to_le_bytes()
}

#[test]
fn f16_conversion() {
    let cases: &[(u16, f32)] = &[
        (0x0000, 0.0),
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x3555, 0.333_251_95),
        (0x7bff, 65504.0),
        (0x0400, 2f32.powi(-14)),          // smallest normal
        (0x0001, 2f32.powi(-24)),          // smallest subnormal
        (0x03ff, 1023.0 * 2f32.powi(-24)), // largest subnormal
        (0x8001, -(2f32.powi(-24))),       // negative subnormal
        (0x0200, 2f32.powi(-15)),          // a subnormal power of two
        (0x7c00, f32::INFINITY),
        (0xfc00, f32::NEG_INFINITY),
    ];
    for &(h, want) in cases {
        assert_eq!(f16_to_f32(h), want, "{h:#06x}");
    }
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    assert!(f16_to_f32(0x7e00).is_nan());
    // Every finite f16 round-trips through f32 arithmetic: the value is
    // sign × 2^(e-15) × (1 + m/1024), or m × 2^-24 when subnormal.
    for h in 0u16..=0xffff {
        let e = (h >> 10) & 0x1f;
        if e == 0x1f {
            continue;
        }
        let m = f64::from(h & 0x3ff);
        let mag = if e == 0 {
            m * 2f64.powi(-24)
        } else {
            (1.0 + m / 1024.0) * 2f64.powi(i32::from(e) - 15)
        };
        let want = if h & 0x8000 != 0 { -mag } else { mag };
        assert_eq!(f64::from(f16_to_f32(h)), want, "{h:#06x}");
    }
}

#[test]
fn plain_types() {
    let f32s = [1.5f32, -2.25, 0.0];
    let bytes: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &bytes, 3).unwrap(), f32s);

    let bytes: Vec<u8> = [H_ONE, H_NEG_QUARTER, H_TWO]
        .iter()
        .flat_map(|&h| le(h))
        .collect();
    assert_eq!(
        dequantize(GgmlType::F16, &bytes, 3).unwrap(),
        [1.0, -0.25, 2.0]
    );

    // bf16 is the top half of an f32.
    let bf: Vec<u8> = [0x3f80u16, 0xc040, 0x3ec0]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize(GgmlType::BF16, &bf, 3).unwrap(),
        [1.0, -3.0, 0.375]
    );

    let f64s = [0.125f64, -7.0];
    let bytes: Vec<u8> = f64s.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F64, &bytes, 2).unwrap(), [0.125, -7.0]);
}

#[test]
fn q4_0_block() {
    // d = 0.5; byte j holds element j (low nibble) and element j + 16 (high).
    let mut b = le(H_HALF).to_vec();
    for j in 0..16u8 {
        b.push(j | ((15 - j) << 4));
    }
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5, "element {j}");
        assert_eq!(
            y[j + 16],
            ((15 - j) as f32 - 8.0) * 0.5,
            "element {}",
            j + 16
        );
    }
    assert_eq!(y[0], -4.0);
    assert_eq!(y[16], 3.5);
}

#[test]
fn q4_1_block() {
    // d = 2, m = -0.25: x = q d + m.
    let mut b = le(H_TWO).to_vec();
    b.extend(le(H_NEG_QUARTER));
    for j in 0..16u8 {
        b.push((j % 16) | (3 << 4));
    }
    let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 2.0 - 0.25);
        assert_eq!(y[j + 16], 3.0 * 2.0 - 0.25);
    }
}

#[test]
fn q8_0_block() {
    let mut b = le(H_HALF).to_vec();
    let qs: Vec<i8> = (0..32).map(|i| (i * 9 - 128) as i8).collect();
    b.extend(qs.iter().map(|&q| q as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    for (j, &q) in qs.iter().enumerate() {
        assert_eq!(y[j], f32::from(q) * 0.5);
    }
    assert_eq!(y[0], -64.0);
}

#[test]
fn q5_0_block() {
    // d = 1; qh bit j is the fifth bit of element j; x = q - 16.
    let mut b = le(H_ONE).to_vec();
    let qh: u32 = 0b1010_0000_0000_0000_0000_0000_0000_0011; // elements 0, 1, 29, 31
    b.extend(qh.to_le_bytes());
    b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
    let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
    for (j, &v) in y.iter().enumerate() {
        let high = (qh >> j) & 1;
        let low = if j < 16 { 1 } else { 2 };
        assert_eq!(v, (low + 16 * high) as f32 - 16.0, "element {j}");
    }
}

#[test]
fn q5_1_block() {
    // d = 0.5, m = 1; x = q d + m.
    let mut b = le(H_HALF).to_vec();
    b.extend(le(H_ONE));
    let qh: u32 = 0x8001_0001; // elements 0, 16, 31
    b.extend(qh.to_le_bytes());
    b.extend([0xf0u8; 16]); // low nibble 0, high nibble 15
    let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
    for (j, &v) in y.iter().enumerate() {
        let high = (qh >> j) & 1;
        let low = if j < 16 { 0 } else { 15 };
        assert_eq!(v, (low + 16 * high) as f32 * 0.5 + 1.0, "element {j}");
    }
}

#[test]
fn q4_k_scales() {
    // All nibbles 1; d = 1, dmin = 0.5; sub-block s has scale s + 1 and min s.
    let mut b = le(H_ONE).to_vec();
    b.extend(le(H_HALF));
    let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8u8).map(|s| (s + 1 + 40, s + 50)).unzip();
    // Pack 8 six-bit scales and mins as ggml's get_scale_min_k4 reads them.
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        scales[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    for j in 0..8 {
        assert_eq!(scale_min_k4(j, &scales), (sc[j], mn[j]), "sub-block {j}");
    }
    b.extend(scales);
    b.extend([0x11u8; 128]);
    let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
    for (i, &v) in y.iter().enumerate() {
        let s = i / 32;
        assert_eq!(v, f32::from(sc[s]) - 0.5 * f32::from(mn[s]), "element {i}");
    }
}

#[test]
fn matches_gguf_py_reference() {
    for &(name, bytes, bits) in fixtures::FIXTURES {
        let ty = (0..64)
            .filter_map(GgmlType::from_id)
            .find(|t| t.name() == name)
            .unwrap();
        let got = dequantize(ty, bytes, bits.len()).unwrap();
        for (i, (&g, &w)) in got.iter().zip(bits).enumerate() {
            let w = f32::from_bits(w);
            let tol = 1e-6 * w.abs().max(1e-3);
            assert!(
                (g - w).abs() <= tol,
                "{name} element {i}: got {g}, gguf-py {w}"
            );
        }
    }
    let covered: Vec<&str> = fixtures::FIXTURES.iter().map(|f| f.0).collect();
    for t in TYPES
        .iter()
        .filter(|t| !matches!(t.dequant, Decode::No) && t.block_size > 1)
    {
        assert!(
            covered.contains(&t.name),
            "no reference fixture for {}",
            t.name
        );
    }
}

#[test]
fn errors_instead_of_panics() {
    let e = dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap_err();
    assert!(e.contains("unsupported GGUF tensor type IQ2_XXS"), "{e}");
    assert!(e.contains("supported: F32, F16, Q4_0"), "{e}");
    let e = dequantize(GgmlType::Q4_0, &[0; 18], 31).unwrap_err();
    assert!(e.contains("not a whole number"), "{e}");
    let e = dequantize(GgmlType::Q4_0, &[0; 17], 32).unwrap_err();
    assert!(e.contains("need 18 bytes, got 17"), "{e}");
    assert!(dequantize(GgmlType::Q6_K, &[], 0).unwrap().is_empty());
}

#[test]
fn type_table() {
    for t in TYPES {
        assert_eq!(GgmlType::from_id(t.id), Some(t.ty));
        assert_eq!(t.ty.id(), t.id);
    }
    assert_eq!(GgmlType::from_id(4), None);
    assert_eq!(GgmlType::Q4_1.to_string(), "Q4_1");
    assert_eq!(
        GgmlType::supported_list(),
        "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F64, BF16"
    );
}
