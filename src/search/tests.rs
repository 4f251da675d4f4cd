use super::epochs::*;
use super::*;

#[test]
fn op_curriculum_starts_with_sep_conv_and_adds_one_op_per_stage() {
    let order = released_op_order(5).unwrap();
    assert_eq!(order[0], Primitive::SepConv3x3);
    let stages = curriculum(CurriculumMode::Op, &Primitive::DARTS, &order, 4);
    assert_eq!(stages.len(), 8);
    for (k, stage) in stages.iter().enumerate() {
        // The mask indexes the primitive list, not curriculum positions: exactly the first
        // k + 1 operations of the order are allowed, wherever they sit in the list.
        for (i, p) in Primitive::DARTS.iter().enumerate() {
            assert_eq!(stage.allowed[i], order[..=k].contains(p), "stage {k}, {p}");
        }
        assert_eq!(stage.ops, order[..=k].iter().map(|p| p.name().to_string()).collect::<Vec<_>>());
        assert_eq!(stage.searched_nodes, 4);
        if k > 0 {
            let before = &stages[k - 1].allowed;
            assert!(before.iter().zip(&stage.allowed).all(|(&a, &b)| !a || b), "stage {k} drops an op");
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    let mut all = Primitive::DARTS.to_vec();
    all.sort();
    assert_eq!(sorted, all);
    // An order that is not the list's own, so the mask test above means something.
    assert_ne!(order, Primitive::DARTS.to_vec());
}

#[test]
fn op_order_comes_from_the_seed_or_by_hand() {
    let a = released_op_order(1).unwrap();
    assert_eq!(a, released_op_order(1).unwrap());
    assert!((2..10).any(|s| released_op_order(s).unwrap() != a));
    let o = SearchOptions { seed: 1, ..SearchOptions::default() };
    assert_eq!(o.resolved_op_order().unwrap(), a);
    let mut by_hand = Primitive::DARTS.to_vec();
    by_hand.reverse();
    let o = SearchOptions { op_order: Some(by_hand.clone()), ..o };
    assert_eq!(o.resolved_op_order().unwrap(), by_hand);
    for bad in [vec![Primitive::SepConv3x3; 8], Primitive::DARTS[..7].to_vec()] {
        let o = SearchOptions { op_order: Some(bad), ..SearchOptions::default() };
        assert!(o.validate().unwrap_err().is_user_error());
    }
}

#[test]
fn node_and_fixed_curricula() {
    let order = Primitive::DARTS.to_vec();
    let stages = curriculum(CurriculumMode::Node, &Primitive::DARTS, &order, 4);
    assert_eq!(stages.iter().map(|s| s.searched_nodes).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(stages.iter().all(|s| s.allowed.iter().all(|&a| a)));
    let stages = curriculum(CurriculumMode::Fixed, &Primitive::DARTS, &order, 4);
    assert_eq!(stages.len(), 1);
    assert!(stages[0].allowed.iter().all(|&a| a));
}

#[test]
fn defaults_are_the_released_code_s() {
    let o = SearchOptions::default();
    assert_eq!((o.init_channels, o.layers, o.nodes, o.batch_size), (16, 8, 4, 96));
    assert_eq!((o.warmup_epochs, o.epochs, o.controller_steps), (20, 40, None));
    assert_eq!(
        (o.lr, o.momentum, o.weight_decay, o.sparse_update, o.grad_clip),
        (0.01, 0.9, 3e-4, false, None)
    );
    assert_eq!((o.controller_lr, o.controller_weight_decay, o.controller_hidden), (3e-4, 5e-4, 128));
    assert_eq!((o.entropy_weight, o.baseline_decay, o.controller_grad_clip), (0.005, 0.99, Some(5.0)));
    assert_eq!((o.temperature, o.tanh_constant), (None, None));
    assert_eq!((o.derive_rounds, o.derive_samples, o.derive_images, o.derive_batch()), (3, 10, 10_000, 96));
    assert_eq!((o.seed, o.op_order.clone(), o.mode), (2020, None, CurriculumMode::Op));
    assert!(o.validate().is_ok() && SearchOptions::quick().validate().is_ok());
    for bad in [
        SearchOptions { entropy_weight: f64::NAN, ..o.clone() },
        SearchOptions { entropy_weight: -1.0, ..o.clone() },
        SearchOptions { grad_clip: Some(0.0), ..o.clone() },
        SearchOptions { controller_grad_clip: Some(f64::INFINITY), ..o.clone() },
        SearchOptions { momentum: 1.0, ..o.clone() },
        SearchOptions { derive_images: 0, ..o.clone() },
        SearchOptions { controller_steps: Some(0), ..o.clone() },
    ] {
        assert!(bad.validate().unwrap_err().is_user_error());
    }
}

#[test]
fn round_and_stage_winners_are_the_first_highest_scores() {
    let genotype = crate::space::published("CNAS").unwrap();
    let c = |score: f64| Candidate {
        stage: 1,
        round: 1,
        sample: 1,
        genotype: genotype.clone(),
        score,
        std_error: 0.0,
        images: 10,
        log_prob: 0.0,
        entropy: 0.0,
        round_best: false,
    };
    let list = [c(0.2), c(0.5), c(0.1), c(0.5)];
    assert_eq!(best_index(&list), Some(1));
    assert_eq!(best_of(list.to_vec()).unwrap().score, 0.5);
    assert_eq!(best_index(&[]), None);
    assert!((std_error(0.5, 100) - 0.05).abs() < 1e-12);
    assert_eq!(std_error(1.0, 10), 0.0);
}

/// The sampling thread hands over exactly the pairs one thread would have drawn, in order,
/// for uniform and controller sampling.
#[test]
fn pairs_from_the_sampling_thread_are_the_inline_draws() {
    let stages = curriculum(CurriculumMode::Op, &Primitive::DARTS, &released_op_order(3).unwrap(), 4);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ControllerConfig::default();
    let normal = Controller::new(&(vs.root() / "normal"), config.clone());
    let reduce = Controller::new(&(vs.root() / "reduce"), config);
    for with_controllers in [false, true] {
        let make = || PairSampler {
            controllers: with_controllers.then(|| [normal.frozen_copy(), reduce.frozen_copy()]),
            stage: stages[3].clone(),
            primitives: Primitive::DARTS.to_vec(),
        };
        let sampler = make();
        let mut inline_rng = stream(7, 3, 1, 0);
        let inline: Vec<(Cell, Cell)> = (0..12).map(|_| sampler.draw(&mut inline_rng)).collect();
        let (moved, mut thread_rng) = (make(), stream(7, 3, 1, 0));
        let threaded: Vec<(Cell, Cell)> = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(PAIRS_AHEAD);
            scope.spawn(move || moved.send(&mut thread_rng, 12, tx));
            rx.iter().collect()
        });
        assert_eq!(threaded, inline);
        let distinct: std::collections::HashSet<String> =
            inline.iter().map(|(n, r)| format!("{n:?}{r:?}")).collect();
        assert!(distinct.len() > 1, "the draws do not vary");
    }
}

#[test]
fn time_left_uses_each_kind_of_epoch_and_stands_in_for_the_untimed_one() {
    let mut pace = Pace::default();
    assert_eq!(pace.time_left(3, 4), None);
    pace.warmup.add(10.0);
    pace.warmup.add(20.0);
    assert_eq!(pace.time_left(2, 3), Some(2.0 * 15.0 + 3.0 * 15.0));
    pace.search.add(40.0);
    assert_eq!(pace.time_left(2, 3), Some(2.0 * 15.0 + 3.0 * 40.0));
    assert_eq!(pace.time_left(0, 0), Some(0.0));
}

#[test]
fn epochs_left_counts_this_stage_and_the_later_ones() {
    let at = |stage, phase, epoch| Position { stage, phase, epoch };
    assert_eq!(epochs_left(at(0, Phase::Warmup, 0), 8, 20, 40), (160, 320));
    assert_eq!(epochs_left(at(0, Phase::Warmup, 20), 8, 20, 40), (140, 320));
    assert_eq!(epochs_left(at(2, Phase::Search, 15), 8, 20, 40), (100, 225));
    assert_eq!(epochs_left(at(7, Phase::Derive, 0), 8, 20, 40), (0, 0));
}

/// Random mode's cost at the defaults (208 weight batches, 312 held-out batches, 10,000
/// derivation images): op's 8 × (20 + 40) weight epochs, and as many whole candidates as op's
/// 8 × 40 × 312 controller batches of 96 and 8 × 30 candidates of 10,000 images pay for.
#[test]
fn random_mode_spends_op_mode_s_budget() {
    let o = SearchOptions::default();
    let inputs = BudgetInputs {
        stages: 8,
        weight_batches: 208,
        controller_steps: 312,
        controller_batch: 96,
        images_per_candidate: 10_000,
    };
    let op = SearchBudget::curriculum(&o, inputs);
    assert_eq!((op.weight_epochs, op.weight_steps, op.controller_steps), (480, 99_840, 99_840));
    assert_eq!((op.candidates, op.heldout_images), (240, 99_840 * 96 + 240 * 10_000));
    let random = SearchBudget::random(&o, inputs);
    assert_eq!((random.weight_epochs, random.weight_steps, random.controller_steps), (480, 99_840, 0));
    assert_eq!((random.candidates, random.heldout_images), (1198, 11_980_000));
    assert_eq!(random.rounds(10), 120);
    assert_eq!(SearchBudget { candidates: 41, ..random.clone() }.rounds(2), 21);
    // Without search epochs, only op's derivations are paid for: 8 × 30 candidates.
    let none = SearchBudget::random(&SearchOptions { epochs: 0, ..o }, inputs);
    assert_eq!((none.weight_epochs, none.candidates), (160, 240));
}

#[test]
fn a_run_records_its_supernet_and_older_runs_had_the_cifar_stem() {
    let data = DataConfig::from_args(&DataArgs::default());
    let older = serde_json::json!({
        "search": {},
        "data": serde_json::to_value(&data).unwrap(),
        "op_order": [],
        "versions": {},
    });
    let older: RunConfig = serde_json::from_value(older).unwrap();
    assert_eq!((older.supernet.as_ref(), older.supernet_stem()), (None, SupernetStem::Cifar));

    let stem = SupernetStem::for_image_size(224);
    let config = supernet_config(&SearchOptions::default(), &Primitive::DARTS, 5, stem);
    let run = RunConfig { supernet: Some(config.clone()), ..older };
    let text = serde_json::to_string(&run).unwrap();
    let back: RunConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back.supernet, Some(config));
    assert_eq!(back.supernet_stem(), SupernetStem::Imagenet { halvings: 3 });
}
