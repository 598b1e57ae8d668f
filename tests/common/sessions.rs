//! The decode check both compiled backends' in-place KV caches must pass.

use super::inputs::max_abs_diff_and_scale;
use kiln_compiler::kernel::KernelProgram;
use kiln_runtime::backends::profile::Profile;
use kiln_runtime::session::Model;
use kiln_runtime::session::Session;

/// A profile of appending runs is indexed like the program's kernels: the
/// skipped cache copies have no time, every other kernel some.
pub fn assert_copies_skipped(what: &str, profile: &Profile, program: &KernelProgram) {
    assert_eq!(profile.by_kernel.len(), program.kernels.len(), "{what}");
    let copies: std::collections::BTreeSet<usize> =
        program.appends.iter().map(|a| a.copy).collect();
    for (ki, t) in profile.by_kernel.iter().enumerate() {
        assert_eq!(
            t.is_zero(),
            copies.contains(&ki),
            "{what}: k{ki} time {t:?}"
        );
    }
}

/// Run a reference session and one of `model` side by side: a padded batch
/// prefill (one row after the same source for encoder-decoder models),
/// then 35 one-token steps — 40 cached positions, so in-place storage of 16
/// rows grows twice. Logits must agree within `tol` (of the largest) at
/// every step, after which `each_step` sees the compiled session; then the
/// first two blocks' caches must agree too. Returns the compiled session.
pub fn decode_alongside<'m>(
    what: &str,
    reference: &Model,
    model: &'m Model,
    tol: f32,
    each_step: &dyn Fn(&Session<'m>),
) -> Session<'m> {
    let encdec = reference.lowered.encoder.is_some();
    let (mut r, mut s) = (reference.session(), model.session());
    let rows: Vec<&[i32]> = if encdec {
        r.set_source(&[4, 5, 6]).unwrap();
        s.set_source(&[4, 5, 6]).unwrap();
        vec![&[1, 2, 3]]
    } else {
        vec![&[1, 2, 3], &[4, 5, 6, 7, 8]]
    };
    let mut feed: Vec<Vec<i32>> = rows.iter().map(|r| r.to_vec()).collect();
    for step in 0..36 {
        let fed: Vec<&[i32]> = feed.iter().map(Vec::as_slice).collect();
        let want = r.forward_batch(&fed).unwrap()["logits"].to_f32_vec();
        let got = s.forward_batch(&fed).unwrap()["logits"].to_f32_vec();
        let (d, scale) = max_abs_diff_and_scale(&want, &got);
        assert!(
            d <= tol * scale,
            "{what}: step {step}: logits differ by {d:e}"
        );
        each_step(&s);
        feed = (0..feed.len())
            .map(|i| vec![(step * 7 + i as i32 * 3) % 50 + 1])
            .collect();
    }
    assert_eq!(r.cache_capacity(), None, "{what}");
    assert_eq!(s.past_len(), r.past_len(), "{what}");
    for layer in 0..2 {
        let (wk, wv) = r.cached_kv(layer).unwrap();
        let (gk, gv) = s.cached_kv(layer).unwrap();
        assert_eq!(wk.shape(), gk.shape(), "{what}");
        for (w, g) in [(wk, gk), (wv, gv)] {
            let (d, scale) = max_abs_diff_and_scale(&w.to_f32_vec(), &g.to_f32_vec());
            assert!(
                d <= tol * scale,
                "{what}: block {layer} cache differs by {d:e}"
            );
        }
    }
    s
}
