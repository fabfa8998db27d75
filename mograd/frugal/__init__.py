"""The exact Gram matrix and update without the k x P Jacobian: :class:`GramianEngine`.

The default exact step (:mod:`mograd.gramian`) writes the k per-loss gradients into one
``(k, P)`` buffer ``J`` and forms ``G = J_S J_S^T``. The Gram matrix is a sum over parameter
blocks, ``G = sum_m J_m J_m^T``, and a block ``J_m`` can be formed from what a module sees
(its input and the per-loss gradients at its output) one module at a time, folded into
``G`` and dropped. The weights only need ``G`` (paper eq. 8). The update
``sum_i c_i grad L_i`` is then formed from the same records (:meth:`GramianEngine.update`):
for ``nn.Linear`` it is ``(sum_i c_i D_i)^T A``, so no backward pass forms a weight
gradient at all; one backward pass of ``sum_i c_i L_i`` (:func:`weighted_gradients`) gives
the same. This is the Gramian-based Jacobian descent of Quinton & Rey, *Jacobian Descent
for Multi-Objective Optimization* (2024), Section 6, without its weighted backward pass;
``docs/performance.md`` states the costs (per module type) and the O(P) memory.

How one step is formed (:meth:`GramianEngine.gram`, then :meth:`GramianEngine.update`),
and where each part lives:

1. ``records``: forward hooks on every module that holds parameters itself and has no
   sub-module holding any record, per call, the gradient edges of its inputs and outputs
   (and, for ``nn.Linear``, its input tensor, which autograd keeps anyway).
2. ``plan``: a walk of the autograd graph finds every use of each parameter. A parameter
   whose uses all lie inside the recorded calls of its own module(s) is *local*; any other
   parameter (one used outside a module call, a module's own parameter beside
   parameterized sub-modules, a parameter of a module that was not hooked) is *direct*.
   Each reached parameter goes into one *unit* (``units``, ``linear``); the shared ones
   enter ``G``, the others (and leaves outside the optimizer, ``extras``) only receive the
   update. The list of units is the plan (:attr:`GramianEngine.last_plan` reports the
   shared part).
3. ``engine``: one backward pass per loss, only down to the recorded module outputs (no
   weight gradient is formed there) and to the direct parameters, each pass handed to
   every unit the same way; without ``retain_graph`` the last pass frees what it runs
   through, as ``loss.backward()`` would.
4. ``units``: per unit, its block product ``J_m J_m^T``:

   * ``nn.Linear`` weight, from the inputs ``A`` (rows: every leading batch dimension and
     every call of the weight, so weight tying between linear layers is exact) and the
     output gradients ``D_i``: ``<D_i^T A, D_j^T A> = <D_i, (A A^T) D_j>``, without any
     weight-sized tensor, when that is cheaper than forming the k weight gradients
     ``D_i^T A`` (chosen per layer by operation count: the activation trick wins when the
     batch is small relative to the layer); bias: ``sum_rows D_i``;
   * every other module (convolutions, normalization layers, embeddings, ...): with fewer
     parameters than output values, its parameters are handled as direct (step 3 forms
     their per-loss gradients, which are smaller than the output gradients); otherwise
     the k output gradients are kept and each per-loss parameter gradient is formed by a
     backward pass through the module's own graph only (from its output edges to its
     parameters), then ``B B^T`` (direct too when the graph is not retained and the
     passes run through that module's graph);
   * direct parameters: their per-loss gradients from step 3.

5. ``folding``: the block products are rescaled by a power of two before they are formed
   and summed in float64, so a finite set of gradients never gives an overflowed ``G``
   (``G`` is returned in float64); each unit then keeps only what its update needs.
6. the update, per unit, from what it kept: ``nn.Linear`` weight ``(sum_i c_i D_i)^T A``
   (one product of the layer's size) or, where the k weight gradients were formed, ``c``
   times them; bias and direct parameters ``c`` times their k gradients; a module handled
   through its own graph, one more backward pass through it with ``sum_i c_i d_i``.

Memory: the k per-loss gradients at the hooked outputs (for each module the smaller of its
output size and its parameter count is kept), k x the largest module's parameters while it
is folded, and k x the direct parameters; never k x P (unless every parameter is direct).
What the update needs is kept from :meth:`GramianEngine.gram` until
:meth:`GramianEngine.clear`.

Under ``torch.distributed`` the Gram matrix of the rank-averaged gradients needs the other
ranks' per-loss gradients, so the activation trick (a per-rank quantity) is not used:
per-loss parameter gradients are formed unit by unit, averaged over the process group
in buckets of at most ``bucket_elements`` columns in the shared parameters' order (the same
collectives on every rank), folded and dropped (``folding``); the update is formed on each
rank from its own records and averaged once (P values).

Assumption (the ``nn.Module`` contract): a hooked module's forward computes its outputs
from its inputs and its own parameters. Parameters used outside module calls are found by
the graph walk and handled as direct, so weight tying of any kind stays exact.
"""

from __future__ import annotations

from .engine import DEFAULT_BUCKET as DEFAULT_BUCKET
from .engine import GramianEngine
from .weighted import weighted_gradients

__all__ = ["GramianEngine", "weighted_gradients"]
