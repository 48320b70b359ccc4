"""Linear probe: how linearly separable the classes are in a frozen embedding (the LINEAR metric)."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from labelless.evaluate.metrics import as_numpy


def logistic_regression(C: float = 1.0, max_iter: int = 1000) -> Pipeline:
    """Standardise, then multinomial logistic regression (L-BFGS, L2 penalty `C`): the probe's model.

    Standardising changes the fit only through the penalty, but L-BFGS then converges in ~10
    iterations where raw PCA coordinates (variances spanning four decades) stop at 100 unconverged.
    """
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def linear_probe(train_features: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                 test_features: Tensor | np.ndarray, test_labels: Tensor | np.ndarray, C: float = 1.0,
                 max_iter: int = 1000) -> float:
    """Test accuracy of a multinomial logistic regression fitted on standardised frozen features.

    The linear-evaluation protocol of the self-supervised literature (Zhang et al. 2016, used by
    DeepCluster and the comparison study) with `logistic_regression`; the standardisation uses
    statistics of the train features only.
    """
    x_train, x_test = as_numpy(train_features), as_numpy(test_features)
    y_train, y_test = as_numpy(train_labels), as_numpy(test_labels)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"features/labels lengths differ: train {len(x_train)}/{len(y_train)}, "
                         f"test {len(x_test)}/{len(y_test)}")
    model = logistic_regression(C, max_iter).fit(x_train, y_train)
    return float(model.score(x_test, y_test))
