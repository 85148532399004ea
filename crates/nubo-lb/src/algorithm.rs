//! The three ways of choosing a backend, as pure functions over what each
//! eligible backend looks like right now ([`View`]), so they can be tested
//! without sockets. The pool hands them only backends that may take
//! traffic (healthy, not draining).

use rand::Rng;

/// What the choice looks at for one eligible backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub weight: u32,
    pub in_flight: u64,
    /// CPU utilisation 0..=1, `None` when unknown (or stale).
    pub cpu: Option<f64>,
}

/// Smooth weighted round-robin (as nginx does it): every pick adds each
/// candidate's weight to its running credit, takes the candidate with the
/// most credit, and charges it the total weight. Weights 5:1:1 give
/// `a a b a c a a`, not `a a a a a b c`. `credit` is indexed like `views`
/// and kept by the caller between picks.
pub fn round_robin(credit: &mut [i64], views: &[View]) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut total: i64 = 0;
    for (i, v) in views.iter().enumerate() {
        let w = i64::from(v.weight.max(1));
        credit[i] += w;
        total += w;
        if best.is_none_or(|b| credit[i] > credit[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    credit[b] -= total;
    Some(b)
}

/// The fewest requests in flight per unit of weight; ties are taken in
/// turn by `turn` (the caller counts it up), so idle backends share.
pub fn least_connections(views: &[View], turn: usize) -> Option<usize> {
    // in_flight_a / w_a < in_flight_b / w_b, without division.
    let less = |a: &View, b: &View| {
        u128::from(a.in_flight) * u128::from(b.weight.max(1)) < u128::from(b.in_flight) * u128::from(a.weight.max(1))
    };
    let best = views.iter().enumerate().fold(None::<usize>, |best, (i, v)| match best {
        Some(b) if !less(v, &views[b]) => Some(b),
        _ => Some(i),
    })?;
    let tied: Vec<usize> = (0..views.len()).filter(|&i| !less(&views[best], &views[i])).collect();
    Some(tied[turn % tied.len()])
}

/// Above this utilisation a backend counts as this busy: it keeps a
/// finite score, so it still gets work when every other backend is far
/// more backed up.
pub const MAX_CPU: f64 = 0.95;

/// The load score `least-loaded` minimises: roughly how long the next
/// request would wait on this backend.
///
/// ```text
/// score = (in_flight + 1) / (weight × (1 − cpu))
/// ```
///
/// The next request queues behind the `in_flight` ones already there and
/// is then served itself (the `+ 1`). The rate at which a backend gets
/// through that queue grows with its weight (its relative capacity) and
/// with the share of its CPU that is still free, `1 − cpu`: a backend
/// whose vCPUs are 90% busy (with our requests or anything else it runs,
/// such as a batch job) has a tenth of its capacity left, and as in a
/// single-server queue its waiting time grows like `1 / (1 − utilisation)`.
/// `cpu` is capped at [`MAX_CPU`]. When the CPU figure is unknown or
/// stale, `1 − cpu` is taken as 1, which leaves weighted in-flight
/// requests alone, i.e. weighted least-connections.
///
/// The in-flight count is exact and immediate (this balancer keeps it);
/// the CPU figure is refreshed every second by the owner, so it reacts to
/// load this balancer does not see.
pub fn score(v: &View) -> f64 {
    let headroom = 1.0 - v.cpu.unwrap_or(0.0).clamp(0.0, MAX_CPU);
    (v.in_flight as f64 + 1.0) / (f64::from(v.weight.max(1)) * headroom)
}

/// Power of two choices: two distinct candidates at random, the one with
/// the lower [`score`] wins (ties at random). Unlike always taking the
/// global minimum, it does not send a burst of requests all to the one
/// backend that looked best a moment ago, and it costs two scores per
/// request whatever the pool size. With two candidates it compares both.
pub fn least_loaded(views: &[View], rng: &mut impl Rng) -> Option<usize> {
    match views.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (sa, sb) = (score(&views[a]), score(&views[b]));
            Some(if sa < sb || (sa == sb && rng.gen_bool(0.5)) { a } else { b })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(weight: u32, in_flight: u64, cpu: Option<f64>) -> View {
        View { weight, in_flight, cpu }
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let views = [v(5, 0, None), v(1, 0, None), v(1, 0, None)];
        let mut credit = [0i64; 3];
        let seq: Vec<usize> = (0..7).map(|_| round_robin(&mut credit, &views).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        // Equal weights: strict rotation.
        let views = [v(1, 0, None); 3];
        let mut credit = [0i64; 3];
        let seq: Vec<usize> = (0..6).map(|_| round_robin(&mut credit, &views).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(round_robin(&mut [], &[]), None);
    }

    #[test]
    fn least_connections_weighs_and_rotates_ties() {
        let views = [v(1, 3, None), v(1, 1, None), v(1, 2, None)];
        assert_eq!(least_connections(&views, 0), Some(1));
        // 4 in flight on weight 4 beats 2 on weight 1.
        let views = [v(1, 2, None), v(4, 4, None)];
        assert_eq!(least_connections(&views, 0), Some(1));
        let idle = [v(1, 0, None); 3];
        assert_eq!(
            (least_connections(&idle, 0), least_connections(&idle, 1), least_connections(&idle, 2)),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(least_connections(&[], 0), None);
    }

    #[test]
    fn the_score_grows_with_cpu_and_in_flight() {
        let idle = score(&v(1, 0, Some(0.0)));
        assert_eq!(idle, 1.0);
        assert_eq!(score(&v(1, 0, None)), idle, "unknown CPU counts as free");
        assert!((score(&v(1, 0, Some(0.9))) - 10.0).abs() < 1e-9, "90% busy: a tenth of the capacity left");
        assert!((score(&v(1, 0, Some(1.0))) - 20.0).abs() < 1e-9, "capped at 95%");
        assert_eq!(score(&v(1, 3, None)), 4.0);
        assert_eq!(score(&v(2, 3, None)), 2.0, "weight is capacity");
    }

    #[test]
    fn least_loaded_prefers_the_idle_backend() {
        let mut rng = rand::thread_rng();
        // Two backends: always compared, the busy one loses until its
        // score is beaten by the idle one's queue.
        let views = [v(1, 0, Some(1.0)), v(1, 0, Some(0.05))];
        assert!((0..100).all(|_| least_loaded(&views, &mut rng) == Some(1)));
        let views = [v(1, 0, Some(1.0)), v(1, 30, Some(0.05))];
        assert_eq!(least_loaded(&views, &mut rng), Some(0), "a long queue on the idle one sends work to the busy one");
        // Ten backends, one busy: P2C sends it far less than its 1/10.
        let mut views = vec![v(1, 0, Some(0.1)); 10];
        views[3].cpu = Some(0.99);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[least_loaded(&views, &mut rng).unwrap()] += 1;
        }
        assert!(counts[3] < 300, "the busy backend got {} of 10000: {counts:?}", counts[3]);
        // Equal views: both of a pair get picked (ties at random).
        let views = [v(1, 0, None); 2];
        let picks: std::collections::HashSet<usize> = (0..64).filter_map(|_| least_loaded(&views, &mut rng)).collect();
        assert_eq!(picks.len(), 2);
        assert_eq!(least_loaded(&[], &mut rng), None);
    }
}
