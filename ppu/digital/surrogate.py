"""The campaign surrogate: an exact Gaussian process per property, mean and uncertainty.

Why a GP and not a deep ensemble: a campaign's measured data is small (tens to a few hundred
points, each one a synthesis and a measurement). On such data an exact GP with a learned
(ARD) length scale per feature and a learned noise level is the sound, standard choice: it has
almost nothing to tune, its uncertainty is calibrated out of the box (checked by a test and
by the leave-one-out coverage every version records), and it fits in about a second on a CPU.
A deep ensemble of small MLPs earns its keep on big screening sets (thousands of points and
more, where an exact GP's O(n^3) fit stops being cheap) and is what to add for those; the served
format below does not change, because :class:`ppu.digital.torch_backend.TorchBackend` serves any
module that returns ``(mean, std)`` columns.

Training uses BoTorch's ``SingleTaskGP`` (RBF kernel with BoTorch's dimension-scaled length
scale prior, ``Standardize`` outcome transform, inputs scaled to the unit cube over the columns
that vary in the training data) and ``fit_gpytorch_mll``. The fitted GP is then *exported* to
:class:`GPPredictor`, a plain ``nn.Module`` whose buffers hold everything prediction needs (the
Cholesky factor, the weights, the hyperparameters), so it is saved as a state_dict, loaded with
``weights_only=True``, served batched with no BoTorch at serving time, and its predictive mean
and std equal BoTorch's posterior with observation noise (tested).

The std a prediction carries is the predictive std of a *measurement* (latent variance plus the
learned noise), so a 90 % interval is a statement about what the instrument will read.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ppu.errors import ValidationFailed

GP_FACTORY = "ppu.digital.surrogate:GPPredictor"
_MIN_POINTS = 3
MAX_GP_POINTS = 5000  # exact GP fit is O(n^3) in time and O(n^2) in memory: refuse beyond this
Z90 = 1.6448536269514722


class GPPredictor(nn.Module):
    """Posterior predictive of an exported exact GP; ``forward(x[B, F]) -> [B, 2]`` (mean, std).

    Built empty with the shapes from the registry's ``kwargs`` and filled by ``load_state_dict``.
    """

    supports_half = False  # a Cholesky solve in float16 is not a prediction

    cols: Tensor
    lo: Tensor
    span: Tensor
    train_x: Tensor
    chol: Tensor
    alpha: Tensor
    lengthscale: Tensor
    outputscale: Tensor
    noise: Tensor
    const: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(self, n_train: int, n_active: int, n_features: int):
        super().__init__()
        self.n_features = n_features
        f64 = torch.float64
        self.register_buffer("cols", torch.zeros(n_active, dtype=torch.long))
        for name, shape in [("lo", (n_active,)), ("span", (n_active,)), ("train_x", (n_train, n_active)),
                            ("chol", (n_train, n_train)), ("alpha", (n_train,)), ("lengthscale", (n_active,)),
                            ("outputscale", ()), ("noise", ()), ("const", ()), ("y_mean", ()), ("y_std", ())]:
            self.register_buffer(name, torch.zeros(shape, dtype=f64))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.train_x.dtype)
        xs = ((x[:, self.cols] - self.lo) / self.span) / self.lengthscale
        ts = self.train_x / self.lengthscale
        k = self.outputscale * torch.exp(-0.5 * torch.cdist(xs, ts).pow(2))  # (B, n)
        mean_s = self.const + k @ self.alpha
        v = torch.linalg.solve_triangular(self.chol, k.T, upper=False)  # (n, B)
        var_s = (self.outputscale - v.pow(2).sum(0)).clamp_min(0.0) + self.noise
        return torch.stack([mean_s * self.y_std + self.y_mean, var_s.sqrt() * self.y_std], dim=-1)


@dataclass
class GPFit:
    """What :func:`fit_gp` returns: the exported predictor, the kwargs that rebuild it, metrics."""

    predictor: GPPredictor
    kwargs: dict[str, Any]
    metrics: dict[str, float]
    botorch_model: Any  # the fitted SingleTaskGP on unit-cube inputs, for inspection and tests


def fit_gp(x: Tensor, y: Tensor, *, seed: int = 0, bounds: Tensor | None = None) -> GPFit:
    """Fit a GP to features ``x[n, F]`` and values ``y[n]``; ``bounds[2, F]``: the box the inputs are
    scaled from (default: the training data's own range), e.g. a campaign's whole candidate pool.

    Metrics: leave-one-out RMSE, NLPD and 90 % interval coverage (closed form from the fitted GP),
    the learned noise std, fit time, and how many L-BFGS runs did not converge.
    """
    with warnings.catch_warnings():
        # linear_operator (under gpytorch) decorates functions with torch.jit.script at import time,
        # which torch >= 2.10 marks deprecated; not ours to fix, and harmless. Only that one is muted.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=DeprecationWarning)
        from botorch.exceptions.warnings import OptimizationWarning
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
        from gpytorch.kernels import RBFKernel, ScaleKernel
        from gpytorch.mlls import ExactMarginalLogLikelihood

    t0 = time.perf_counter()
    x = x.to(torch.float64)
    y = y.to(torch.float64).reshape(-1)
    n, n_features = x.shape
    if n != y.numel():
        raise ValidationFailed(f"{n} candidates but {y.numel()} values", field="inputs.values")
    if n < _MIN_POINTS:
        raise ValidationFailed(f"a GP needs at least {_MIN_POINTS} points, got {n}", field="inputs.values")
    if n > MAX_GP_POINTS:
        raise ValidationFailed(f"{n} points is beyond an exact GP ({MAX_GP_POINTS} max)",
                               field="inputs.values", hint="subsample, or serve a deep ensemble for big data")
    if not torch.isfinite(y).all():
        raise ValidationFailed("values must be finite numbers", field="inputs.values")
    lo, hi = x.min(0).values, x.max(0).values
    if bounds is not None:
        bounds = bounds.to(torch.float64)
        if tuple(bounds.shape) != (2, n_features) or not bool((bounds[1] >= bounds[0]).all()):
            raise ValidationFailed(f"bounds must be [lo, hi] rows of {n_features} features with lo <= hi",
                                   field="inputs.feature_bounds")
        lo, hi = bounds[0], bounds[1]
    cols = torch.nonzero(hi - lo > 1e-9).reshape(-1)
    if cols.numel() == 0:
        raise ValidationFailed("all training candidates are identical", field="inputs.candidates")
    lo, span = lo[cols], (hi - lo)[cols]
    xn = (x[:, cols] - lo) / span  # the unit cube BoTorch expects

    torch.manual_seed(seed)
    gp = SingleTaskGP(xn, y.unsqueeze(-1),
                      covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=int(cols.numel())),
                      outcome_transform=Standardize(m=1))
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    with warnings.catch_warnings(record=True) as caught:
        # a non-converged L-BFGS run is not an error here: it is recorded in the metrics instead
        warnings.simplefilter("always", OptimizationWarning)
        fit_gpytorch_mll(mll)
    fit_warnings = sum(1 for w in caught if issubclass(w.category, OptimizationWarning))
    for w in caught:
        if not issubclass(w.category, OptimizationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    gp.eval()

    kernel = gp.covar_module
    outputscale = torch.tensor(1.0, dtype=torch.float64)
    if isinstance(kernel, ScaleKernel):
        outputscale = kernel.outputscale.detach().reshape(())
        kernel = kernel.base_kernel
    if not isinstance(kernel, RBFKernel):
        raise TypeError(f"GP export supports RBF kernels, got {type(kernel).__name__}")
    with torch.no_grad():
        ls = kernel.lengthscale.detach().reshape(-1)
        noise = gp.likelihood.noise.detach().reshape(())
        const = gp.mean_module.constant.detach().reshape(())
        tf = gp.outcome_transform
        y_mean = tf.means.detach().reshape(())  # type: ignore[union-attr,operator]
        y_std = tf.stdvs.detach().reshape(())  # type: ignore[union-attr,operator]
        ys = (y - y_mean) / y_std
        xs = xn / ls
        kmat = outputscale * torch.exp(-0.5 * torch.cdist(xs, xs).pow(2))
        kmat = kmat + noise * torch.eye(n, dtype=torch.float64)
        chol = torch.linalg.cholesky(kmat)
        alpha = torch.cholesky_solve((ys - const).unsqueeze(-1), chol).reshape(-1)
        # closed-form leave-one-out (Rasmussen & Williams eq. 5.12), in standardised units
        kinv_diag = torch.cholesky_inverse(chol).diagonal()
        loo_mu = ys - alpha / kinv_diag
        loo_sd = (1.0 / kinv_diag).sqrt()
        z = (ys - loo_mu) / loo_sd
        loo_rmse = float(((ys - loo_mu).pow(2).mean().sqrt()) * y_std)
        loo_nlpd = float((0.5 * z.pow(2) + loo_sd.log() + y_std.log() + 0.5 * math.log(2 * math.pi)).mean())
        loo_cov90 = float((z.abs() <= Z90).double().mean())

    pred = GPPredictor(n, int(cols.numel()), n_features)
    pred.load_state_dict({
        "cols": cols, "lo": lo, "span": span, "train_x": xn, "chol": chol, "alpha": alpha,
        "lengthscale": ls, "outputscale": outputscale, "noise": noise, "const": const,
        "y_mean": y_mean, "y_std": y_std,
    })
    pred.eval()
    kwargs = {"n_train": n, "n_active": int(cols.numel()), "n_features": n_features}
    metrics = {
        "n_train": float(n), "loo_rmse": loo_rmse, "loo_nlpd": loo_nlpd, "loo_coverage90": loo_cov90,
        "noise_std": float(noise.sqrt() * y_std), "y_std": float(y_std),
        "fit_seconds": time.perf_counter() - t0, "fit_warnings": float(fit_warnings),
    }
    return GPFit(pred, kwargs, metrics, gp)
