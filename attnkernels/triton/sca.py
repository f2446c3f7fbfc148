"""SCA (SCA-CNN spatial and channel-wise attention) in Triton, and the backend contract that the
CUDA backend (csrc/sca/, attnkernels/cuda/sca.py) implements too. Spec: attnkernels/reference/sca.py.

Notation. V (N, C, H, W), HW = H*W, location l = h*W + w; h (N, d); k_c / k_s units of the channel /
spatial branch (one `attn_units` in the module; the kernels allow them to differ). cs = C if scale
else 1, ss = HW if scale else 1: the factors the attention weights are applied with. "acc dtype":
fp64 for fp64 V, else fp32 (attnkernels._alloc.acc_dtype).
    hc[n] = W_hc h[n] + b_c           (k_c)     channel:  zc[n,c] = tanh(v[n,c] w_c + hc[n]) . u_c
    hs[n] = W_hs h[n] + b_s           (k_s)     spatial:  zs[n,l] = tanh(W_s U[n,:,l] + hs[n]) . u_s
    beta = softmax_c(zc), alpha = softmax_l(zs); v = mean_l of the channel branch's input.
c_c and c_s shift every logit of their softmax alike, so no output depends on them: the kernels never
read them (their gradients are sum dz, below).

Backend contract (attnkernels.triton and attnkernels.cuda export both functions; the custom ops
attnkernels::sca_forward / sca_backward in attnkernels/sca.py validate and normalize the inputs)
-----------------------------------------------------------------------------------------------
sca_forward(V, h, w_c, b_c, W_hc, u_c, W_s, b_s, W_hs, u_s, order, scale, tf32)
        -> (X, hc, hs, v, beta, alpha)
  V: N >= 1, C, H, W >= 1, contiguous NCHW or channels_last. h: (N, d) contiguous, d >= 0.
  Channel parameters (order has "c", else all None): w_c, b_c, u_c (k_c,), W_hc (k_c, d).
  Spatial parameters (order has "s", else all None): W_s (k_s, C), b_s (k_s,), W_hs (k_s, d), u_s (k_s,).
  All contiguous, V's dtype and device. order: "cs" | "sc" | "c" | "s"; scale: bool; tf32: bool,
  fp32 products may use TF32 (the front end reads torch's setting; False: IEEE fp32 products).
  X: like V (same memory format). Saved for the backward, all in the acc dtype:
    hc (N, k_c), hs (N, k_s): the hidden projections, biases included;
    v (N, C): the channel branch's pooled input, mean_l U (U = V, or V * ss*alpha for "sc");
    beta (N, C), alpha (N, HW): the softmax probabilities (unscaled; also the maps that
      return_attention returns, cast to V's dtype by the front end).
    The tensors of a branch the order lacks are empty (0,) tensors (hc, v, beta / hs, alpha).
sca_backward(dX, V, h, w_c, W_hc, u_c, W_s, W_hs, u_s, hc, hs, v, beta, alpha, dbeta, dalpha,
             order, scale, tf32)
        -> (dV, dh, dw_c, db_c, dW_hc, du_c, dc_c, dW_s, db_s, dW_hs, du_s, dc_s)
  dX: V's shape, dtype and memory format. dbeta (N, C) / dalpha (N, HW): gradients reaching the
  returned maps (acc dtype, contiguous) or None. dV like V; dh (N, d) in h's dtype; parameter
  gradients in V's dtype, shaped as the flat parameters (dc_c, dc_s: (1,)); an absent branch's
  are empty (0,) tensors. dc_c = sum_{n,c} dzc, dc_s = sum_{n,l} dzs (0 up to rounding; NaN / inf
  reach them as in eager).

Forward kernels (Triton `_sca_<name>`, CUDA `sca_<name>_kernel`), launched in this order:
  "cs": hidden, channel(U=V), spatial(U=V*cs*beta), apply    "c": hidden, channel, apply
  "sc": hidden, spatial(U=V), channel(U=V*ss*alpha), apply   "s": hidden, spatial, apply
  hidden   grid (n, k block): hc and hs (mat-vecs over d, + bias).
  channel  grid (n, channel block cb, HW split sp), SE's squeeze grid: the split's sum over its HW
           range (weighted by alpha[l] for "sc"), split partials combined by the last split of
           (n, cb) to arrive (arrival counter), v = sum / HW (* ss for "sc"); that program forms
           its channels' logits (tanh over k_c in blocks, dot u_c), stores them in beta and
           parks their (max, sum exp); the last channel block of the sample combines the parked
           pairs (fixed order) and rewrites beta[n] = exp(zc - max) / sum (stable softmax).
  spatial  grid (n, location block lb): for each k_s block, P (BL x BK) = sum over channel
           blocks of dot(U tile (BL x BC), W_s^T tile (BC x BK)) (tensor cores; U = V, times
           cs*beta[c] for "cs", rounded to V's dtype as the reference's V' is), a = tanh(P + hs),
           zs += a . u_s. No (N, HW, k) tensor: P lives in registers, the V tile is re-read per
           k block (L1/L2). Stores zs in alpha, parks (max, sum exp) of the block; the last block
           of the sample rewrites alpha[n] = exp(zs - max) / sum.
  apply    grid (n, cb, sp): X = V * (cs*beta[c]) * (ss*alpha[l]) (the factors the order has),
           one rounding.
Backward (T = dX * V elementwise; "rows" are per-block partial sums, later added in a fixed order):
  reduce       grid (n, cb, lb), one (BC x BL) tile each: loc rows (N, n_cb, HW):
               sum_{c in cb} T * (cs*ss*beta[c] if the order has both, else ss); ch rows
               (N, n_lb, C): sum_{l in lb} T * (cs*ss*alpha[l] if both, else cs). Mode DV ("sc",
               second run, after channel_bwd): loc rows of sum_c V * dv[c] * ss / HW only.
  softmax_bwd  grid (n): g = the sum of the given row groups (+ dbeta / dalpha), then
               dz = p * (g - sum_m p g) (p = beta or alpha): dzc (N, C) / dzs (N, HW).
  channel_bwd  grid (n, cb): b = tanh(v w_c + hc), dB = dzc u_c (1 - b^2); dv[n, c] = dB . w_c
               (N, C); rows (N, n_cb, k_c) of dhc = sum_c dB, du_c = sum_c dzc b, dw_c = sum_c dB v.
  spatial_bwd  grid (chunk sample, lb, kb): P recomputed as in spatial; dP = dzs u_s (1 - a^2)
               written to the dP scratch (chunk, HW, k_s) in V's dtype (fp32 / fp64 for those);
               rows (N, n_lb, k_s) of dhs = sum_l dP, du_s = sum_l dzs a (its kb slice).
  spatial_dw   grid (kb, cb): per sample n of the chunk, M_n = dP_n^T V_n (BK x BC, tensor cores,
               over the sample's locations); dW_s tile += M_n * (cs*beta_n[c] for "cs"), samples
               in order, chunks in launch order (an acc-dtype (k_s, C) accumulator when there are
               several chunks; the last chunk's launch casts). "cs" also writes g2 rows
               (N, n_kb, C): cs * sum_{j in kb} W_s[j, c] M_n[j, c], the share of g_beta that
               flows through the spatial logits (sum_l (W_s^T dP)[c, l] V[c, l]).
  dx           grid (chunk sample, lb, cb): G = dP[n, lb, :] @ W_s[:, cb] (tensor cores over k_s
               blocks), then dV = "s": dX ss alpha + G;   "cs": (dX ss alpha + G) cs beta + dv/HW;
               "sc": (dX cs beta + dv/HW) ss alpha + G;   "c": dX cs beta + dv/HW (no G, all N).
  hidden_bwd   grid (n, d block): dhc[n], dhs[n] = their rows summed (stored by d block 0),
               dh[n, db] = W_hc[:, db]^T dhc[n] + W_hs[:, db]^T dhs[n].
  weights      dW_hc = dhc^T h and db_c = sum_n dhc, dW_hs / db_s likewise (blocked sums over n,
               _mlp.outer_sum_tile), then du_c, dw_c, du_s (their rows summed), dc_c, dc_s.
  Sequences:
    "c":  reduce, softmax_bwd(ch rows), channel_bwd, dx, hidden_bwd, weights
    "s":  reduce, softmax_bwd(loc rows), per chunk [spatial_bwd, spatial_dw, dx], hidden_bwd, weights
    "cs": reduce, softmax_bwd(loc rows), per chunk [spatial_bwd, spatial_dw],
          softmax_bwd(ch rows + g2 rows), channel_bwd, per chunk [spatial_bwd (again, only with
          more than one chunk), dx], hidden_bwd, weights
    "sc": reduce, softmax_bwd(ch rows), channel_bwd, reduce(mode DV), softmax_bwd(loc rows + DV
          rows), per chunk [spatial_bwd, spatial_dw, dx], hidden_bwd, weights
  Deterministic: no float atomics; every partial is parked and summed in a fixed order (arrival
  counters, as SE's, only pick which program combines the forward's split partials and softmax).

dW_s (the reduction over N*HW) and its cost. dP is a GEMM operand of two products (dW_s = sum
dP^T V', and G = dP W_s for dV) whose reduction runs over k_s (G) and over (n, l) (dW_s), so it
goes through a scratch of S samples' dP, S = min(N, max(1, DP_BUDGET // (HW * k_s))), DP_BUDGET
= 2^22 elements (8 MiB bf16, 16 MiB fp32): bounded, never (N, HW, k) for large N; the samples run
in chunks of S. Cost: spatial_bwd, spatial_dw and dx are three GEMMs of the forward's size
(2 N HW C k_s flops each), plus a fourth ("cs" with more than one chunk: dP recomputed for dx,
since dx needs dv, which needs every chunk's g2 rows). Rejected: per-(k block, c block) programs
recomputing P (P needs all of C: n_cb times the forward GEMM), and an (N, HW, k) dP.
"""
