//! dudect-style statistical timing tests (Reparaz, Balasch, Verbauwhede 2017): a function is
//! timed on inputs of two classes interleaved at random, and Welch's t-test compares the two
//! distributions after cropping the slow tail that interrupts and frequency changes add. A
//! timing that depends on the class shows as a large |t|. Behaviour, not speed: no absolute time
//! is asserted, and a slow or busy machine slows both classes alike.

use std::hint::black_box;
use std::time::Instant;

/// dudect's threshold for "definitely leaks" is |t| > 10 with tens of thousands of samples;
/// below 4.5 it finds nothing. Assertions sit at 10 so that noise alone does not fail them.
pub const LEAK: f64 = 10.0;

/// Welch's t of two timing samples, each cropped at its own percentile `crop`.
pub fn welch_t(a: &mut [u64], b: &mut [u64], crop: f64) -> f64 {
    let stats = |v: &mut [u64]| {
        v.sort_unstable();
        let keep = &v[..((v.len() as f64) * crop) as usize];
        let n = keep.len() as f64;
        let mean = keep.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = keep.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var, n)
    };
    let (ma, va, na) = stats(a);
    let (mb, vb, nb) = stats(b);
    (ma - mb) / (va / na + vb / nb).sqrt()
}

/// Times `f` on every input (after a warm-up over the first thousand) and returns the largest
/// |t| between the inputs of class 0 and class 1 over three crops. Inputs and classes must be
/// drawn before (drawing them in between would time the generator's side effects).
pub fn max_t<I>(inputs: &[I], classes: &[u8], mut f: impl FnMut(&I)) -> f64 {
    for input in inputs.iter().take(1000) {
        f(black_box(input));
    }
    let mut times = vec![0u64; inputs.len()];
    for (input, time) in inputs.iter().zip(times.iter_mut()) {
        let start = Instant::now();
        f(black_box(input));
        *time = start.elapsed().as_nanos() as u64;
    }
    let (mut a, mut b): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for (time, class) in times.iter().zip(classes) {
        if *class & 1 == 0 { a.push(*time) } else { b.push(*time) }
    }
    [0.5, 0.75, 0.9].iter().map(|&c| welch_t(&mut a.clone(), &mut b.clone(), c).abs()).fold(0.0, f64::max)
}
