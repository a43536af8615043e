"""Sparse products on every core (topo.graph.products) against scipy's, and the solvers that use them."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse
import torch

from topo.graph.products import csr_product


def test_the_product_equals_scipys_for_vectors_and_blocks_whatever_the_threads():
    matrix = scipy.sparse.random(300, 200, density=0.1, format="csr", random_state=0)
    rng = np.random.default_rng(0)
    vector, block = rng.standard_normal(200), rng.standard_normal((200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's beta and invariant-check warnings are not the user's
        product = csr_product(matrix)
    assert np.allclose(product(vector), matrix @ vector, rtol=1e-13, atol=1e-13)
    assert np.allclose(product(block), matrix @ block, rtol=1e-13, atol=1e-13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = product(vector)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(alone, product(vector))  # one thread per row: the same sums on any number of threads
    assert product(vector.astype(np.float32)).dtype == np.float64
