"""The pool optimiser: distinct proposals with pending points, constraint, screening shortlist."""

from __future__ import annotations

import numpy as np

from ppu.campaign.config import CampaignConfig
from ppu.campaign.optimizer import PoolOptimizer
from ppu.campaign.runner import build_world
from ppu.campaign.simclock import simulate


def _setup(pool_size: int = 80) -> tuple:
    cfg = CampaignConfig.model_validate({"world": {"pool_size": pool_size}, "budget": {"max_syntheses": 8},
                                         "screening": {"top_k": 25, "prior_points": 20}})
    world, pool = build_world(cfg)
    return cfg, world, pool


def test_pending_points_give_distinct_proposals_after_the_gp_takes_over() -> None:
    _cfg, world, pool = _setup()
    opt = PoolOptimizer(pool, seed=1, n_init=3)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(pool), size=8, replace=False):  # some pure, some not
        t = world.properties(pool[i])
        opt.observe(pool[i].id or "", t.purity, t.co2_uptake_mmol_g if t.purity >= 0.85 else None)
    opt.purity_min = 0.85
    pending: list[str] = []
    for _ in range(4):
        d = opt.propose(pending)
        assert d.candidate_id not in pending
        assert d.index not in opt.obs
        assert d.acquisition is not None and d.mean is not None and d.std is not None
        assert d.model_version.startswith("bo-gp-")
        assert "qNEI" in d.why or "purity" in d.why
        assert d.pending == pending
        pending.append(d.candidate_id)
    assert len(set(pending)) == 4


def test_screening_shortlist_limits_eligible_candidates() -> None:
    _cfg, world, pool = _setup()
    screen = world.values(pool)  # a perfect twin, for the test
    opt = PoolOptimizer(pool, seed=0, screen=screen, top_k=10)
    assert int(opt.eligible.sum()) == 10
    d = opt.propose([])
    assert d.index in set(np.flatnonzero(opt.eligible)) and d.screen_mean is not None
    assert "screened" in d.why


def test_simulated_clock_campaign_beats_the_pool_median() -> None:
    cfg, world, pool = _setup(60)
    run = simulate(cfg, world, pool, "ppu", seed=0)
    assert len(run.done) == cfg.budget.max_syntheses
    assert run.best_curve[-1] > float(np.median(world.values(pool)))
    assert 0 < run.busy["robot"] <= run.makespan_s * cfg.parallel.synthesis_robots


def test_soft_shortlist_lets_the_gp_look_past_a_twin_that_ranks_backwards() -> None:
    _cfg, world, pool = _setup()
    truth = world.values(pool)
    backwards = -truth  # a twin that shortlists the worst candidates
    picks = {}
    for weight in (0.0, 1.0):
        opt = PoolOptimizer(pool, seed=0, screen=backwards, top_k=10, outside_weight=weight)
        for i in np.argsort(truth)[:6]:  # the initial design measured six of the shortlist
            opt.observe(opt.ids[i], 0.95, float(truth[i]))
        d = opt.propose([])
        picks[weight] = bool(opt.eligible[d.index])
    assert picks == {0.0: True, 1.0: False}  # hard shortlist stays inside; the soft one leaves it


def test_decisions_read_the_surrogate_the_learn_step_published(tmp_path) -> None:
    """The learn step's task (the trainer's own function, on the optimiser's training set, features and
    box) publishes a version; adopted, the decision GP predicts what the published model serves."""
    import torch

    from ppu.digital.model_registry import ModelRegistry
    from ppu.digital.surrogate import GPPredictor
    from ppu.drivers.mof.capabilities import TrainInput
    from ppu.drivers.mof.featurize import featurize
    from ppu.drivers.mof.trainer import train_surrogate

    _cfg, world, pool = _setup()
    screen = np.asarray(world.values(pool)) + np.random.default_rng(1).normal(0, 0.3, len(pool))
    opt = PoolOptimizer(pool, seed=0, n_init=3, screen=screen)
    for i in np.random.default_rng(2).choice(len(pool), size=10, replace=False):
        t = world.properties(pool[i])
        opt.observe(pool[i].id or "", 0.95, t.co2_uptake_mmol_g)
    assert opt.propose([]).model_version.startswith("bo-gp-")  # before any version: its own fit
    ids, values, extra = opt.training_set("uptake")
    by_id = {c.id: c for c in pool}
    ver, _, kernel = train_surrogate(tmp_path, TrainInput(
        target="co2_uptake_measured", candidates=[by_id[c] for c in ids], values=values, extra_features=extra,
        extra_feature_names=opt.extra_feature_names(), feature_bounds=opt.feature_bounds()))
    opt.adopt("uptake", f"co2_uptake_measured/{ver.version}", kernel)
    d = opt.propose([])
    assert d.model_version.startswith("co2_uptake_measured/v0001+n10")
    assert d.surrogates == {"uptake": "co2_uptake_measured/v0001"}
    published = ModelRegistry(tmp_path).get("co2_uptake_measured", "v0001")
    served = GPPredictor(**published.meta()["kwargs"])
    served.load_state_dict(torch.load(published.weights_path, weights_only=True))
    x = torch.cat([featurize(pool), torch.as_tensor(screen, dtype=torch.float64).unsqueeze(-1)], dim=-1)
    with torch.no_grad():
        want = served(x).numpy()
    gp, _ = opt.models()
    assert gp is not None
    with torch.no_grad():
        post = gp.posterior(opt.x, observation_noise=True)
        mean, std = post.mean.squeeze(-1).numpy(), post.variance.sqrt().squeeze(-1).numpy()
    np.testing.assert_allclose(mean, want[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, want[:, 1], rtol=1e-3, atol=1e-4)
    try:
        opt.adopt("uptake", "other/v0001", kernel.model_copy(update={"lengthscale": kernel.lengthscale[:-1]}))
    except ValueError as exc:
        assert "features" in str(exc)
    else:
        raise AssertionError("a kernel over other features was adopted")
