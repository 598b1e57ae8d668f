//! GGUF reader, dequantisation, name mapping, spec derivation and tokenizer,
//! on files written here byte by byte (no fixtures on disk).

use kiln_open::gguf::{Array, GgmlType, GgufFile, Value};
use kiln_runtime::{Tensor, Weights};

// ---------------------------------------------------------------------------
// A minimal GGUF writer.

#[derive(Clone, Debug)]
enum W {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements.
    Arr(u32, Vec<W>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl W {
    fn type_id(&self) -> u32 {
        match self {
            W::U8(_) => 0,
            W::I8(_) => 1,
            W::U16(_) => 2,
            W::I16(_) => 3,
            W::U32(_) => 4,
            W::I32(_) => 5,
            W::F32(_) => 6,
            W::Bool(_) => 7,
            W::Str(_) => 8,
            W::Arr(..) => 9,
            W::U64(_) => 10,
            W::I64(_) => 11,
            W::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            W::U8(v) => out.push(*v),
            W::I8(v) => out.push(*v as u8),
            W::U16(v) => out.extend(v.to_le_bytes()),
            W::I16(v) => out.extend(v.to_le_bytes()),
            W::U32(v) => out.extend(v.to_le_bytes()),
            W::I32(v) => out.extend(v.to_le_bytes()),
            W::F32(v) => out.extend(v.to_le_bytes()),
            W::Bool(v) => out.push(u8::from(*v)),
            W::Str(s) => put_str(out, s),
            W::Arr(ty, items) => {
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            W::U64(v) => out.extend(v.to_le_bytes()),
            W::I64(v) => out.extend(v.to_le_bytes()),
            W::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn s(v: &str) -> W {
    W::Str(v.into())
}

fn strs<S: AsRef<str>>(v: &[S]) -> W {
    W::Arr(8, v.iter().map(|x| s(x.as_ref())).collect())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

struct Gguf {
    version: u32,
    alignment: u64,
    kv: Vec<(String, W)>,
    /// name, ne (innermost first), ggml type id, data
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Gguf {
    fn new() -> Gguf {
        Gguf {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    fn kv(mut self, key: &str, v: W) -> Gguf {
        if key == "general.alignment"
            && let W::U32(a) = v
            && a.is_power_of_two()
        {
            self.alignment = u64::from(a);
        }
        self.kv.push((key.into(), v));
        self
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Gguf {
        self.tensors.push((name.into(), ne.to_vec(), ty, data));
        self
    }

    /// An f32 tensor from a kiln row-major shape.
    fn f32(self, name: &str, shape: &[usize], data: &[f32]) -> Gguf {
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &ne, 0, bytes)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, ne, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(self.alignment);
        }
        let pad = |out: &mut Vec<u8>, a: u64| {
            while !(out.len() as u64).is_multiple_of(a) {
                out.push(0);
            }
        };
        pad(&mut out, self.alignment);
        let start = out.len() as u64;
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            while (out.len() as u64) < start + off {
                out.push(0);
            }
            out.extend(data);
        }
        out
    }

    fn parse(&self) -> Result<GgufFile, String> {
        GgufFile::from_bytes("test.gguf", self.bytes()).map_err(|e| e.to_string())
    }
}

fn parse_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes("bad.gguf", bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("bad.gguf: "),
                "error must name the file: {msg}"
            );
            msg
        }
    }
}

fn f16_bits(v: f32) -> u16 {
    // Exact for the small dyadic values used here.
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    if v == 0.0 {
        return sign;
    }
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{v} is not a normal f16");
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

// ---------------------------------------------------------------------------
// Container.

fn every_type() -> Gguf {
    Gguf::new()
        .kv("a.u8", W::U8(200))
        .kv("a.i8", W::I8(-5))
        .kv("a.u16", W::U16(60000))
        .kv("a.i16", W::I16(-30000))
        .kv("a.u32", W::U32(4_000_000_000))
        .kv("a.i32", W::I32(-7))
        .kv("a.f32", W::F32(0.5))
        .kv("a.bool", W::Bool(true))
        .kv("a.str", s("héllo"))
        .kv("a.u64", W::U64(1 << 40))
        .kv("a.i64", W::I64(-(1 << 40)))
        .kv("a.f64", W::F64(-2.5))
        .kv(
            "a.arr_i32",
            W::Arr(5, vec![W::I32(1), W::I32(-2), W::I32(3)]),
        )
        .kv("a.arr_str", strs(&["x", "", "yz"]))
        .kv("a.arr_empty", W::Arr(6, vec![]))
        .kv("a.arr_bool", W::Arr(7, vec![W::Bool(false), W::Bool(true)]))
        .kv(
            "a.nested",
            W::Arr(
                9,
                vec![W::Arr(0, vec![W::U8(1), W::U8(2)]), W::Arr(0, vec![])],
            ),
        )
}

#[test]
fn metadata_of_every_type() {
    for version in [2, 3] {
        let mut g = every_type();
        g.version = version;
        let f = g.parse().unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.get("a.u8"), Some(&Value::U8(200)));
        assert_eq!(f.get("a.i8"), Some(&Value::I8(-5)));
        assert_eq!(f.get("a.u16"), Some(&Value::U16(60000)));
        assert_eq!(f.get("a.i16"), Some(&Value::I16(-30000)));
        assert_eq!(f.get("a.u32"), Some(&Value::U32(4_000_000_000)));
        assert_eq!(f.get("a.i32"), Some(&Value::I32(-7)));
        assert_eq!(f.get("a.f32"), Some(&Value::F32(0.5)));
        assert_eq!(f.get("a.bool"), Some(&Value::Bool(true)));
        assert_eq!(f.get_str("a.str").unwrap(), "héllo");
        assert_eq!(f.get("a.u64"), Some(&Value::U64(1 << 40)));
        assert_eq!(f.get("a.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(f.get("a.f64"), Some(&Value::F64(-2.5)));
        assert_eq!(
            f.get("a.arr_i32"),
            Some(&Value::Array(Array::I32(vec![1, -2, 3])))
        );
        let strs = f.get("a.arr_str").and_then(Value::as_array).unwrap();
        assert_eq!(strs.as_strings().unwrap(), ["x", "", "yz"]);
        assert_eq!(
            f.get("a.arr_empty"),
            Some(&Value::Array(Array::F32(vec![])))
        );
        assert_eq!(
            f.get("a.arr_bool"),
            Some(&Value::Array(Array::Bool(vec![false, true])))
        );
        assert_eq!(
            f.get("a.nested"),
            Some(&Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::U8(vec![])
            ])))
        );
        // Accessors convert between integer widths, never silently from negatives.
        assert_eq!(f.get_u64("a.u8").unwrap(), 200);
        assert_eq!(f.get_f64("a.i16").unwrap(), -30000.0);
        let e = f.get_u64("a.i32").unwrap_err().to_string();
        assert!(e.contains("`a.i32` must be a non-negative integer"), "{e}");
        let e = f.get_str("missing.key").unwrap_err().to_string();
        assert_eq!(e, "test.gguf: missing metadata key `missing.key`");
        let keys: Vec<&str> = f.metadata().map(|(k, _)| k).collect();
        assert_eq!(keys[0], "a.u8");
        assert_eq!(keys.len(), 17);
    }
}

#[test]
fn tensors_and_alignment() {
    for alignment in [1u32, 8, 32, 64, 4096] {
        let g = Gguf::new()
            .kv("general.alignment", W::U32(alignment))
            .f32("a", &[3], &[1.0, 2.0, 3.0])
            .f32("b", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .f32("scalar", &[], &[7.0]);
        let f = g.parse().unwrap();
        assert_eq!(f.alignment(), u64::from(alignment));
        assert_eq!(f.data_offset() % u64::from(alignment), 0);
        let b = f.tensor("b").unwrap();
        assert_eq!(b.dims, [3, 2]);
        assert_eq!(b.shape(), [2, 3]);
        assert_eq!(b.ty, GgmlType::F32);
        assert_eq!(b.n_bytes, 24);
        assert_eq!(
            f.tensor_f32("b").unwrap(),
            Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap()
        );
        assert_eq!(
            f.tensor_f32("a").unwrap().as_f32().unwrap(),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(f.tensor_f32("scalar").unwrap().shape(), &[] as &[usize]);
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "scalar"]);
    }
}

#[test]
fn quantised_tensors_through_the_file() {
    // One Q8_0 row of 32 (d = 0.5) and one Q4_0 row of 64 (two blocks).
    let mut q8 = f16_bits(0.5).to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let mut q4 = Vec::new();
    for d in [1.0f32, -2.0] {
        q4.extend(f16_bits(d).to_le_bytes());
        q4.extend((0..16u8).map(|j| j | (j << 4)));
    }
    let iq = vec![0u8; 66];
    let f = Gguf::new()
        .tensor("q8", &[32, 1], GgmlType::Q8_0.id(), q8)
        .tensor("q4", &[64], GgmlType::Q4_0.id(), q4)
        .tensor("iq", &[256], GgmlType::IQ2_XXS.id(), iq)
        .parse()
        .unwrap();
    let q8 = f.tensor_f32("q8").unwrap();
    assert_eq!(q8.shape(), [1, 32]);
    assert_eq!(q8.as_f32().unwrap()[0], -8.0);
    assert_eq!(q8.as_f32().unwrap()[31], 7.5);
    let q4 = f.tensor_f32("q4").unwrap();
    let v = q4.as_f32().unwrap();
    assert_eq!((v[0], v[15], v[16], v[31]), (-8.0, 7.0, -8.0, 7.0));
    assert_eq!((v[32], v[47]), (16.0, -14.0));
    let e = f.tensor_f32("iq").unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "test.gguf: unsupported GGUF tensor type IQ2_XXS in tensor `iq`; supported: {}",
            GgmlType::supported_list()
        )
    );
    assert!(e.contains("Q4_1") && e.contains("Q6_K") && e.contains("BF16"));
    let e = f.tensor_f32("nope").unwrap_err().to_string();
    assert_eq!(e, "test.gguf: no tensor named `nope`");
}

#[test]
fn malformed_headers() {
    let e = parse_err(b"GGML\x03\0\0\0".to_vec());
    assert!(e.contains("not a GGUF file"), "{e}");
    let e = parse_err(Vec::new());
    assert!(
        e.contains("truncated file: the magic number needs 4 bytes"),
        "{e}"
    );

    let mut g = every_type();
    g.version = 1;
    assert!(parse_err(g.bytes()).contains("GGUF version 1 is not supported"));
    g.version = 3u32.swap_bytes();
    assert!(parse_err(g.bytes()).contains("big-endian GGUF"));
    g.version = 7;
    assert!(parse_err(g.bytes()).contains("unsupported GGUF version 7 (supported: 2, 3)"));

    let e = parse_err(Gguf::new().kv("general.alignment", W::U32(24)).bytes());
    assert!(
        e.contains("`general.alignment` is 24; it must be a power of two"),
        "{e}"
    );
    let e = parse_err(Gguf::new().kv("general.alignment", W::U64(32)).bytes());
    assert!(
        e.contains("`general.alignment` must be a u32, found u64"),
        "{e}"
    );
    let e = parse_err(Gguf::new().kv("general.alignment", W::U32(0)).bytes());
    assert!(e.contains("power of two"), "{e}");

    let e = parse_err(Gguf::new().kv("k", W::U8(1)).kv("k", W::U8(2)).bytes());
    assert!(
        e.contains("duplicate metadata key `k` (entries #0 and #1)"),
        "{e}"
    );
    let e = parse_err(
        Gguf::new()
            .f32("t", &[1], &[0.0])
            .f32("t", &[1], &[0.0])
            .bytes(),
    );
    assert!(e.contains("duplicate tensor name `t`"), "{e}");
}

/// Overwrite the `u64` (or `u32`) at `at`.
fn poke(bytes: &mut [u8], at: usize, v: &[u8]) {
    bytes[at..at + v.len()].copy_from_slice(v);
}

#[test]
fn absurd_counts_and_lengths_are_errors() {
    // Header layout: magic 0..4, version 4..8, tensor count 8..16, kv count 16..24.
    let base = Gguf::new()
        .kv("general.name", s("m"))
        .f32("t", &[4], &[1.0; 4]);
    let good = base.bytes();

    let mut b = good.clone();
    poke(&mut b, 16, &(1u64 << 60).to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("the header's metadata count claims 1152921504606846976 entries"),
        "{e}"
    );

    let mut b = good.clone();
    poke(&mut b, 8, &u64::MAX.to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("the header's tensor count claims 18446744073709551615 entries"),
        "{e}"
    );

    // The key length of the first metadata entry.
    let mut b = good.clone();
    poke(&mut b, 24, &(1u64 << 62).to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("the key of metadata entry #0 claims a length of 4611686018427387904 bytes"),
        "{e}"
    );

    // An array claiming 2^60 elements.
    let g = Gguf::new().kv("tokens", strs(&["a"]));
    let mut b = g.bytes();
    let count_at = 24 + 8 + "tokens".len() + 4 + 4;
    poke(&mut b, count_at, &(1u64 << 60).to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("metadata `tokens` (array of string) claims 1152921504606846976 entries"),
        "{e}"
    );

    // A string element claiming a huge length.
    let mut b = g.bytes();
    poke(&mut b, count_at + 8, &u64::MAX.to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("metadata `tokens` element 0 claims a length of"),
        "{e}"
    );

    // A tensor claiming a terabyte.
    let e = parse_err(
        Gguf::new()
            .tensor("blk.0.huge", &[1 << 20, 1 << 18], 0, vec![0; 64])
            .bytes(),
    );
    assert!(
        e.contains("tensor `blk.0.huge` (F32 [1048576, 262144], 1099511627776 bytes"),
        "{e}"
    );
    assert!(e.contains("extends past the end of the file"), "{e}");

    // Dimensions whose product overflows.
    let e = parse_err(
        Gguf::new()
            .tensor("ovf", &[1 << 32, 1 << 32, 1 << 32], 0, vec![])
            .bytes(),
    );
    assert!(
        e.contains("tensor `ovf` has dimensions") && e.contains("overflows"),
        "{e}"
    );

    let e = parse_err(
        Gguf::new()
            .tensor("five", &[1, 1, 1, 1, 1], 0, vec![0; 4])
            .bytes(),
    );
    assert!(
        e.contains("tensor `five` has 5 dimensions; ggml allows at most 4"),
        "{e}"
    );
    let e = parse_err(Gguf::new().tensor("odd", &[4], 77, vec![0; 4]).bytes());
    assert!(
        e.contains("tensor `odd` has unknown ggml type id 77"),
        "{e}"
    );
    let e = parse_err(
        Gguf::new()
            .tensor("row", &[33], GgmlType::Q4_0.id(), vec![0; 18])
            .bytes(),
    );
    assert!(
        e.contains(
            "tensor `row` has row length 33, which is not a multiple of Q4_0's block size 32"
        ),
        "{e}"
    );

    // A tensor offset that is not aligned.
    let mut b = Gguf::new().f32("t", &[1], &[1.0]).bytes();
    let offset_at = 24 + 8 + 1 + 4 + 8 + 4;
    poke(&mut b, offset_at, &4u64.to_le_bytes());
    let e = parse_err(b);
    assert!(
        e.contains("tensor `t` has data offset 4, which is not a multiple of the alignment 32"),
        "{e}"
    );

    // Unknown metadata value type; bad bool; nesting too deep.
    let mut b = Gguf::new().kv("k", W::U8(1)).bytes();
    poke(&mut b, 24 + 8 + 1, &13u32.to_le_bytes());
    assert!(parse_err(b).contains("metadata `k` has unknown value type 13"));
    let mut b = Gguf::new().kv("k", W::Bool(true)).bytes();
    poke(&mut b, 24 + 8 + 1 + 4, &[7]);
    assert!(parse_err(b).contains("metadata `k` is a bool stored as byte 7"));
    let mut deep = W::Arr(0, vec![]);
    for _ in 0..20 {
        deep = W::Arr(9, vec![deep]);
    }
    let e = parse_err(Gguf::new().kv("deep", deep).bytes());
    assert!(e.contains("nests arrays more than 8 deep"), "{e}");

    // Invalid UTF-8 in a key is an error; in a value it is replaced.
    let mut b = Gguf::new().kv("kk", s("vv")).bytes();
    poke(&mut b, 24 + 8, &[0xff]);
    assert!(parse_err(b).contains("the key of metadata entry #0 is not valid UTF-8"));
    let mut b = Gguf::new().kv("kk", s("vv")).bytes();
    poke(&mut b, 24 + 8 + 2 + 4 + 8, &[0xff]);
    let f = GgufFile::from_bytes("x", b).unwrap();
    assert_eq!(f.get_str("kk").unwrap(), "\u{fffd}v");
}

fn full_file() -> Vec<u8> {
    let mut q4 = Vec::new();
    for _ in 0..2 {
        q4.extend(f16_bits(0.25).to_le_bytes());
        q4.extend(f16_bits(-1.0).to_le_bytes());
        q4.extend(0..16u8);
    }
    every_type()
        .kv("general.alignment", W::U32(16))
        .f32("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
        .tensor("q", &[32, 2], GgmlType::Q4_1.id(), q4)
        .bytes()
}

#[test]
fn every_truncation_is_an_error() {
    let full = full_file();
    let f = GgufFile::from_bytes("full.gguf", full.clone()).unwrap();
    assert_eq!(f.tensor_f32("q").unwrap().shape(), [2, 32]);
    for len in 0..full.len() {
        let r = GgufFile::from_bytes("cut.gguf", full[..len].to_vec());
        let e = r.map(|_| ()).unwrap_err().to_string();
        assert!(e.starts_with("cut.gguf: "), "{e}");
        assert!(
            e.contains("truncated") || e.contains("remain") || e.contains("past the end"),
            "length {len}: {e}"
        );
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let full = full_file();
    // A deterministic xorshift: flip 1-4 random bytes, thousands of times.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed = 0;
    for _ in 0..4000 {
        let mut b = full.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", b) {
            parsed += 1;
            for t in f.tensors().to_vec() {
                let _ = f.tensor_f32(&t.name);
            }
            let _ = f.spec_toml();
            let _ = f.weights();
            let _ = f.tokenizer();
        }
    }
    assert!(
        parsed > 100,
        "most single-byte changes in data still parse ({parsed})"
    );
}

#[test]
fn open_errors_name_the_file() {
    let e = GgufFile::open("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/model.gguf: cannot open:"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("kiln-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, full_file()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.tensor_f32("w").unwrap().as_f32().unwrap(),
        [1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(f.path(), path);
    std::fs::write(&path, b"").unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("tiny.gguf: truncated file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg(unix)]
fn open_refuses_devices_and_pipes_without_blocking() {
    let e = GgufFile::open("/dev/zero").unwrap_err().to_string();
    assert_eq!(
        e,
        "/dev/zero: cannot open: not a regular file (a directory, device or pipe)"
    );
    let dir = std::env::temp_dir().join(format!("kiln-gguf-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("pipe.gguf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        // Opening a FIFO for reading blocks until a writer appears: it must
        // be refused before it is opened.
        let e = GgufFile::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
    let e = GgufFile::open(&dir).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Llama-family models: spec, names, Q/K permutation.

const TINY_LLAMA: &str = r#"
name = "tiny"
architecture = "decoder"
vocab_size = 40
d_model = 16
layers = 2
max_positions = 64

[attention]
heads = 4
kv_heads = 2

[norm]
kind = "rmsnorm"
eps = 1e-6
placement = "pre"
final_norm = true

[positions]
kind = "rope"
theta = 500000.0

[mlp]
d_ff = 24
activation = "silu"
gated = true

[head]
kind = "lm"
tied = false
"#;

/// `convert_hf_to_gguf`'s permutation of Q/K rows for interleaved RoPE.
fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for p in 0..2 {
                let r = h * hd + p * hd / 2 + j;
                out.extend_from_slice(&w[r * cols..(r + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(kiln: &str) -> String {
    let table = [
        ("embed.tokens", "token_embd.weight"),
        ("final_norm.weight", "output_norm.weight"),
        ("head.weight", "output.weight"),
        ("attn_norm.weight", "attn_norm.weight"),
        ("mlp_norm.weight", "ffn_norm.weight"),
        ("attn.q.weight", "attn_q.weight"),
        ("attn.k.weight", "attn_k.weight"),
        ("attn.v.weight", "attn_v.weight"),
        ("attn.o.weight", "attn_output.weight"),
        ("attn.q.bias", "attn_q.bias"),
        ("attn.k.bias", "attn_k.bias"),
        ("attn.v.bias", "attn_v.bias"),
        ("mlp.gate.weight", "ffn_gate.weight"),
        ("mlp.up.weight", "ffn_up.weight"),
        ("mlp.down.weight", "ffn_down.weight"),
    ];
    if let Some(rest) = kiln.strip_prefix("layers.") {
        let (i, tail) = rest.split_once('.').unwrap();
        let (_, g) = table.iter().find(|(k, _)| *k == tail).unwrap();
        return format!("blk.{i}.{g}");
    }
    table
        .iter()
        .find(|(k, _)| *k == kiln)
        .unwrap()
        .1
        .to_string()
}

/// A GGUF of `spec_toml`'s model with kiln's seeded random weights, written
/// the way llama.cpp's converter writes architecture `arch`.
fn model_file(
    arch: &str,
    spec_toml: &str,
    permuted: bool,
) -> (Gguf, Weights, kiln_compiler::lower::Lowered) {
    let rs = kiln_compiler::spec::load_str(spec_toml, "tiny.toml".as_ref()).unwrap();
    let lowered = kiln_compiler::lower::lower(&rs).unwrap();
    let graphs: Vec<_> = lowered.graphs().collect();
    let weights = Weights::random(&graphs, 3).unwrap();
    let sp = &rs.spec;
    let k = |key: &str| format!("{arch}.{key}");
    let mut g = Gguf::new()
        .kv("general.architecture", s(arch))
        .kv("general.name", s("Tiny \"Test\" Model"))
        .kv(&k("context_length"), W::U32(sp.max_positions as u32))
        .kv(&k("embedding_length"), W::U32(sp.d_model as u32))
        .kv(&k("block_count"), W::U32(sp.layers as u32))
        .kv(&k("feed_forward_length"), W::U32(sp.mlp.d_ff as u32))
        .kv(
            &k("attention.head_count"),
            W::U32(sp.attention.heads as u32),
        )
        .kv(
            &k("attention.head_count_kv"),
            W::U32(sp.attention.kv_heads() as u32),
        )
        .kv(
            &k("attention.layer_norm_rms_epsilon"),
            W::F32(sp.norm.eps as f32),
        )
        .kv(&k("rope.freq_base"), W::F32(sp.positions.theta() as f32))
        .kv(
            &k("rope.dimension_count"),
            W::U32(sp.attention.head_dim(sp.d_model) as u32),
        );
    let heads = sp.attention.heads;
    let kv = sp.attention.kv_heads();
    for (name, t) in weights.iter() {
        let shape = t.shape();
        let data = t.as_f32().unwrap();
        let rows = shape[0];
        let cols: usize = shape[1..].iter().product();
        let data = match () {
            _ if permuted && name.contains("attn.q.") => permute(data, rows, cols, heads),
            _ if permuted && name.contains("attn.k.") => permute(data, rows, cols, kv),
            _ => data.to_vec(),
        };
        g = g.f32(&gguf_name(name), shape, &data);
    }
    (g, weights, lowered)
}

#[test]
fn llama_spec_weights_and_unpermutation() {
    let (g, weights, lowered) = model_file("llama", TINY_LLAMA, true);
    let f = g.parse().unwrap();
    let text = f.spec_toml().unwrap();
    let spec = f.spec().unwrap();
    // The text is the same spec: saved and loaded back, it resolves to
    // what the metadata gave (the name with its quotes, eps and theta
    // exactly).
    let reread = kiln_compiler::spec::load_str(&text, "saved.toml".as_ref()).unwrap();
    assert_eq!(reread.spec, spec.spec, "{text}");
    assert_eq!(spec.spec.name, "Tiny \"Test\" Model");
    assert_eq!(spec.spec.norm.eps, 1e-6);
    assert_eq!(spec.spec.positions.theta(), 500000.0);
    assert!(
        text.starts_with("# Derived from the metadata of "),
        "{text}"
    );
    let want = kiln_compiler::spec::load_str(TINY_LLAMA, "tiny.toml".as_ref()).unwrap();
    let mut got_spec = spec.spec.clone();
    got_spec.name = want.spec.name.clone();
    assert_eq!(got_spec, want.spec);
    assert_eq!(spec.layers, want.layers);

    let loaded = f.weights().unwrap();
    let decoder = lowered.decoder.as_ref().unwrap();
    loaded.check(decoder).unwrap();
    assert_eq!(loaded.len(), weights.len());
    for (name, t) in weights.iter() {
        assert_eq!(
            loaded.get(name),
            Some(t),
            "{name} (the Q/K permutation is undone)"
        );
    }
}

#[test]
fn llama_with_tied_head_and_no_permutation_is_wrong_without_unpermuting() {
    // Written without the permutation, a llama file's Q/K come back permuted:
    // proves the loader really reorders rows (and only Q/K).
    let (g, weights, _) = model_file("llama", TINY_LLAMA, false);
    let loaded = g.parse().unwrap().weights().unwrap();
    for (name, t) in weights.iter() {
        let same = loaded.get(name) == Some(t);
        assert_eq!(
            same,
            !name.contains("attn.q.") && !name.contains("attn.k."),
            "{name}"
        );
    }
}

#[test]
fn qwen2_biases_tied_head_no_permutation() {
    let spec = TINY_LLAMA
        .replace("kv_heads = 2", "kv_heads = 2\nqkv_bias = true")
        .replace("tied = false", "tied = true");
    let (g, weights, lowered) = model_file("qwen2", &spec, false);
    let f = g.parse().unwrap();
    let text = f.spec_toml().unwrap();
    assert!(
        text.contains("qkv_bias = true") && text.contains("tied = true"),
        "{text}"
    );
    let rs = f.spec().unwrap();
    assert!(rs.spec.attention.qkv_bias && rs.spec.head.tied);
    let loaded = f.weights().unwrap();
    loaded.check(lowered.decoder.as_ref().unwrap()).unwrap();
    for (name, t) in weights.iter() {
        assert_eq!(loaded.get(name), Some(t), "{name}");
    }
    assert!(loaded.get("layers.1.attn.q.bias").is_some());
}

/// Sizes everything else derives from are checked first, so the error
/// names the key at fault (a head count of 0 used to blame
/// `rope.dimension_count`).
#[test]
fn zero_and_indivisible_sizes_name_their_key() {
    let (g, _, _) = model_file("llama", TINY_LLAMA, true);
    let with = |key: &str, v: u32| {
        let mut b = Gguf {
            kv: g.kv.clone(),
            tensors: g.tensors.clone(),
            ..Gguf::new()
        };
        for (k, val) in b.kv.iter_mut() {
            if k == key {
                *val = W::U32(v);
            }
        }
        b.parse().unwrap().spec().unwrap_err().to_string()
    };
    // The family file's [gguf.config] reads each key into a config field; the
    // error is the field's, and says which metadata key it came from.
    for (key, field) in [
        ("llama.attention.head_count", "num_attention_heads"),
        ("llama.attention.head_count_kv", "num_key_value_heads"),
        ("llama.block_count", "num_hidden_layers"),
        ("llama.embedding_length", "hidden_size"),
    ] {
        let e = with(key, 0);
        eprintln!("{e}");
        assert!(e.starts_with("test.gguf: "), "{e}");
        assert!(e.contains(&format!("`{field}`")), "{e}");
        assert!(
            e.contains(&format!("read from `{key}` of the GGUF metadata")),
            "{e}"
        );
        assert!(e.contains('0'), "{e}");
    }
    let e = with("llama.attention.head_count_kv", 3);
    assert!(
        e.contains("`num_key_value_heads` = 3 must be positive and divide num_attention_heads = 4")
            && e.contains("read from `llama.attention.head_count_kv`"),
        "{e}"
    );
}

#[test]
fn model_errors_are_clear() {
    let (g, _, _) = model_file("llama", TINY_LLAMA, true);
    let mut bad = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    };
    bad.kv[0].1 = s("rwkv6");
    let f = bad.parse().unwrap();
    let e = f.spec().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "test.gguf: unsupported architecture `rwkv6` (general.architecture); supported: "
        ) && e.contains("llama, ")
            && e.contains("gemma3"),
        "{e}"
    );
    assert_eq!(f.weights().unwrap_err().to_string(), e);

    let g2 = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    }
    .f32("blk.0.attn_qkv.weight", &[2], &[0.0, 0.0])
    .f32("mystery", &[1], &[0.0])
    .f32("blk.1.attn_rot_embd.weight", &[2], &[0.0, 0.0]);
    let e = g2.parse().unwrap().weights().unwrap_err().to_string();
    assert!(
        e.contains(
            "2 tensor(s) have no kiln name for architecture `llama`: blk.0.attn_qkv.weight, mystery"
        ),
        "{e}"
    );

    let mut g3 = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    };
    g3.kv.retain(|(k, _)| k != "llama.block_count");
    let e = g3.parse().unwrap().spec().unwrap_err().to_string();
    assert_eq!(
        e,
        "test.gguf: missing metadata key `llama.block_count` (the family file models/families/llama.toml reads `num_hidden_layers` from it)"
    );

    let mut g4 = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    };
    g4.tensors.retain(|t| t.0 != "token_embd.weight");
    let e = g4.parse().unwrap().spec().unwrap_err().to_string();
    assert!(e.contains("missing tensor `token_embd.weight`"), "{e}");

    // A metadata/shape contradiction surfaces as a spec or check error, not a panic.
    let mut g5 = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    };
    for (k, v) in &mut g5.kv {
        if k == "llama.attention.head_count" {
            *v = W::U32(3);
        }
    }
    let f5 = g5.parse().unwrap();
    let e = f5.spec().unwrap_err().to_string();
    assert!(
        e.contains("`num_attention_heads` = 3 does not divide hidden_size = 16")
            && e.contains("read from `llama.attention.head_count`"),
        "{e}"
    );
    // The weights are mapped for the spec the file describes, so they fail the same way.
    assert_eq!(f5.weights().unwrap_err().to_string(), e);
}

/// DeepSeek-V2/V3 GGUFs (`deepseek2`) are recognised and refused with the
/// family file's reason, naming the metadata key it came from.
#[test]
fn deepseek2_is_refused_with_the_reason() {
    let (g, _, _) = model_file("llama", TINY_LLAMA, true);
    let mut d = Gguf {
        kv: g.kv.clone(),
        tensors: g.tensors.clone(),
        ..Gguf::new()
    };
    d.kv[0].1 = s("deepseek2");
    let d = d.kv("deepseek2.attention.kv_lora_rank", W::U32(512));
    let e = d.parse().unwrap().spec().unwrap_err().to_string();
    assert!(
        e.contains("`kv_lora_rank`")
            && e.contains("multi-head latent attention")
            && e.contains("rank-512 latent")
            && e.contains("`deepseek2.attention.kv_lora_rank`"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Tokenizer.

/// A byte-level BPE vocabulary: the 256 byte symbols, then merged tokens,
/// then control tokens.
fn tokenizer_file(pre: Option<&str>, add_bos: bool) -> Gguf {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    let mut types: Vec<W> = vec![W::I32(3), W::I32(3)];
    for c in alphabet {
        tokens.push(c.to_string());
        types.push(W::I32(1));
    }
    let merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "1 2", "Ġ Ġ"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(W::I32(1));
    }
    tokens.push("<user>".into());
    types.push(W::I32(4));
    let mut g = Gguf::new()
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.tokens", strs(&tokens))
        .kv("tokenizer.ggml.token_type", W::Arr(5, types))
        .kv("tokenizer.ggml.merges", strs(&merges))
        .kv("tokenizer.ggml.bos_token_id", W::U32(1))
        .kv("tokenizer.ggml.eos_token_id", W::U32(0))
        .kv("tokenizer.ggml.add_bos_token", W::Bool(add_bos));
    if let Some(p) = pre {
        g = g.kv("tokenizer.ggml.pre", s(p));
    }
    g
}

#[test]
fn byte_level_bpe_tokenizer() {
    let f = tokenizer_file(Some("gpt2"), false).parse().unwrap();
    let tok = f.tokenizer().unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    let ids = tok.encode("x the cat 12").unwrap();
    assert_eq!(ids, [id("x"), id("Ġthe"), id("Ġcat"), id("Ġ"), id("12")]);
    assert_eq!(tok.decode(&ids).unwrap(), "x the cat 12");
    // Control tokens in the text are matched whole; user-defined ones too.
    let ids = tok.encode("<|im_start|>the<user>").unwrap();
    assert_eq!(ids, [1, id("t"), id("he"), id("<user>")]);
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>the<user>");
    // Any UTF-8 round-trips through the byte alphabet.
    let text = "naïve 東京\n\n  tabs\tand 🎉";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(0));
    assert_eq!(tok.end_of_generation_ids(), [0]);
    assert!(!tok.adds_bos());
    assert_eq!(tok.vocab_size(), 2 + 256 + 8 + 1);
    use kiln_open::tokenizer::TokenizerError;
    let e = tok.decode(&[100_000]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "token id 100000 is outside the vocabulary of 267 tokens"
    );
    assert!(matches!(
        tok.decode_i32(&[-1]).unwrap_err(),
        TokenizerError::UnknownId { id: -1, vocab: 267 }
    ));
}

#[test]
fn pre_tokenizer_choice_and_bos() {
    // SmolLM/StarCoder split digits one by one, so the "1 2" merge never applies.
    let tok = tokenizer_file(Some("smollm"), true)
        .parse()
        .unwrap()
        .tokenizer()
        .unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert!(tok.adds_bos());
    assert_eq!(
        tok.encode("12 the").unwrap(),
        [1, id("1"), id("2"), id("Ġthe")]
    );
    assert_eq!(
        tok.encode_i32("12").unwrap(),
        [1, id("1") as i32, id("2") as i32]
    );
    // The HF tokenizer alone adds BOS too (for kiln's generic Tokenizer wrapper).
    assert_eq!(
        tok.inner().encode("the", true).unwrap().get_ids(),
        [1, id("t"), id("he")]
    );
    let generic = tok.to_tokenizer();
    assert_eq!(generic.encode("the").unwrap(), [1, id("t"), id("he")]);
    assert_eq!(generic.eos, [0]);

    // No `pre` key: GPT-2's regex.
    let tok = tokenizer_file(None, false)
        .parse()
        .unwrap()
        .tokenizer()
        .unwrap();
    assert_eq!(tok.pre_tokenizer(), "default");
    assert_eq!(tok.encode("12").unwrap(), [tok.token_id("12").unwrap()]);

    // Llama 3 and Qwen2 regexes compile and keep text intact.
    for pre in ["llama-bpe", "qwen2"] {
        let tok = tokenizer_file(Some(pre), false)
            .parse()
            .unwrap()
            .tokenizer()
            .unwrap();
        let text = "Hello, world!  123 4567\n\nIt's";
        assert_eq!(
            tok.decode(&tok.encode(text).unwrap()).unwrap(),
            text,
            "{pre}"
        );
    }
}

#[test]
fn tokenizer_errors() {
    let e = tokenizer_file(Some("klingon"), false)
        .parse()
        .unwrap()
        .tokenizer()
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("test.gguf: unsupported pre-tokenizer `klingon` (tokenizer.ggml.pre); supported: default, gpt2"), "{e}");
    let mut g = tokenizer_file(None, false);
    g.kv[0].1 = s("llama");
    let e = g.parse().unwrap().tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("unsupported tokenizer model `llama` (tokenizer.ggml.model); supported: gpt2"),
        "{e}"
    );
    let mut g = tokenizer_file(None, false);
    g.kv[4].1 = W::U32(5000);
    let e = g.parse().unwrap().tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("`tokenizer.ggml.bos_token_id` is 5000, outside the vocabulary of 267 tokens"),
        "{e}"
    );
    let mut g = tokenizer_file(None, false);
    g.kv[3].1 = strs(&["nospace"]);
    let e = g.parse().unwrap().tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("`tokenizer.ggml.merges` entry 0 (\"nospace\") is not two tokens"),
        "{e}"
    );
    let mut g = tokenizer_file(None, false);
    g.kv[2].1 = W::Arr(5, vec![W::I32(1)]);
    let e = g.parse().unwrap().tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("`tokenizer.ggml.token_type` has 1 entries but `tokenizer.ggml.tokens` has 267"),
        "{e}"
    );
    let mut g = tokenizer_file(None, false);
    g.kv[1].1 = W::U32(3);
    let e = g.parse().unwrap().tokenizer().unwrap_err().to_string();
    assert!(
        e.contains("`tokenizer.ggml.tokens` must be an array of strings, found u32"),
        "{e}"
    );
}

/// A spec given GGUF weights that do not fit it: the error names the file
/// and lists what does not fit.
#[test]
fn a_gguf_that_does_not_fit_the_spec_names_the_file() {
    use kiln_open::source::{OpenOptions, open};
    let (g, _, _) = model_file("llama", TINY_LLAMA, true);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.gguf");
    std::fs::write(&file, g.bytes()).unwrap();
    let spec = dir.path().join("wider.toml");
    std::fs::write(&spec, TINY_LLAMA.replace("d_model = 16", "d_model = 32")).unwrap();
    let opts = OpenOptions {
        weights: Some(&file),
        ..OpenOptions::default()
    };
    let e = open(&spec, opts).err().expect("a mismatch").to_string();
    assert!(
        e.starts_with(&format!(
            "{}: the file's tensors do not fit the spec",
            file.display()
        )),
        "{e}"
    );
    assert!(e.contains("embed.tokens"), "{e}");
}

/// A GGUF whose tokenizer kiln cannot read (SentencePiece, `llama`) still
/// opens: the model runs on token ids and the warning says what is missing.
#[test]
fn a_gguf_with_an_unsupported_tokenizer_runs_on_token_ids() {
    use kiln_open::source::{OpenOptions, open};
    let (g, _, _) = model_file("llama", TINY_LLAMA, true);
    let g = g
        .kv("tokenizer.ggml.model", s("llama"))
        .kv("tokenizer.ggml.tokens", strs(&["<unk>", "<s>", "</s>"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spm.gguf");
    std::fs::write(&file, g.bytes()).unwrap();
    let loaded = open(&file, OpenOptions::default()).expect("opens without its tokenizer");
    assert!(loaded.tokenizer.is_none());
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(
        w.contains("unsupported tokenizer model `llama`") && w.contains("--tokens"),
        "{w}"
    );
    let out = loaded.model.session().forward(&[1, 2, 3]).unwrap();
    let shape = out["logits"].shape().to_vec();
    assert_eq!(shape[..2], [1, 3], "{shape:?}");
}
