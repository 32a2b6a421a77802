// NVRTC kernels of the CUDA device: the same arithmetic as the CPU kernels (src/ops/*.rs), one
// section per op file, so parity can be checked kernel by kernel. Reductions run in a fixed order
// (no atomics), so results are deterministic.

// ---- hashes (src/device.rs) -----------------------------------------------------------------

__device__ __forceinline__ unsigned int splitmix_hash(unsigned long long key, unsigned long long index) {
    unsigned long long z = key + index * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned int)((z ^ (z >> 31)) >> 32);
}

__device__ __forceinline__ unsigned int fmix32(unsigned int h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

// Dropout::bits
__device__ __forceinline__ unsigned int mask_bits(unsigned int seed, unsigned int index) {
    return fmix32((index * 0x9E3779B9u) ^ seed);
}

// Dropout::seed
__device__ __forceinline__ unsigned int key_seed(unsigned long long key) {
    return fmix32((unsigned int)key ^ fmix32((unsigned int)(key >> 32) ^ 0x5BD1E995u));
}

// encoders::mix_key
__device__ __forceinline__ unsigned long long mix_key(unsigned long long seed, unsigned long long a, unsigned long long b) {
    unsigned long long hi = splitmix_hash(seed, a * 0x100000001ull + b);
    unsigned long long lo = splitmix_hash(seed ^ 0xD1B54A32D192ED03ull, b * 31ull + a);
    return (hi << 32) | lo;
}

// A dropout: has, seed, threshold, scale. The multiplier of element `index`.
__device__ __forceinline__ float drop_factor(int has, unsigned int seed, unsigned int threshold, float scale, unsigned int index) {
    if (!has) return 1.0f;
    return mask_bits(seed, index) >= threshold ? scale : 0.0f;
}

// ---- activations (src/ops/act.rs) -----------------------------------------------------------

#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_GELU 2
#define ACT_SILU 3

__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float act_apply(int act, float x) {
    switch (act) {
        case ACT_RELU: return x < 0.0f ? 0.0f : x;  // keeps NaN, as PyTorch
        case ACT_GELU: return x * normal_cdf(x);
        case ACT_SILU: return x * sigmoidf(x);
        default: return x;
    }
}

__device__ __forceinline__ float act_grad(int act, float x) {
    switch (act) {
        case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
        case ACT_GELU: return normal_cdf(x) + x * 0.3989422804014327f * expf(-0.5f * x * x);
        case ACT_SILU: { float s = sigmoidf(x); return s * (1.0f + x * (1.0f - s)); }
        default: return 1.0f;
    }
}

extern "C" __global__ void fill(float* x, float v, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

// dst = scale*dst + src, rounded as the CPU rounds it (no contraction into an FMA).
extern "C" __global__ void scale_add(float* dst, float scale, const float* src, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __fadd_rn(__fmul_rn(scale, dst[i]), src[i]);
}

// y = dropout(relu?(y + b)) in place on [rows, cols]
extern "C" __global__ void bias_act_forward(float* y, const float* b, unsigned long long n, int cols, int relu,
                                            int has, unsigned int seed, unsigned int threshold, float scale) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = y[i] + b[i % cols];
    if (relu && x < 0.0f) x = 0.0f;
    y[i] = x * drop_factor(has, seed, threshold, scale, (unsigned int)i);
}

extern "C" __global__ void act_backward(float* dy, const float* h, float scale, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) dy[i] = h[i] > 0.0f ? dy[i] * scale : 0.0f;
}

// db[c] (+)= sum_r dy[r, c], one thread per column (rows summed in order: deterministic)
extern "C" __global__ void bias_grad(float* db, const float* dy, int rows, int cols, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = accumulate ? db[c] : 0.0f;
    for (int r = 0; r < rows; ++r) s += dy[(unsigned long long)r * cols + c];
    db[c] = s;
}

// pre += bias (if any); out = dropout(act(pre))
extern "C" __global__ void act_forward(float* pre, float* out, const float* bias, int has_bias, unsigned long long n, int cols, int act,
                                       int has, unsigned int seed, unsigned int threshold, float scale) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float p = pre[i];
    if (has_bias) { p += bias[i % cols]; pre[i] = p; }
    out[i] = act_apply(act, p) * drop_factor(has, seed, threshold, scale, (unsigned int)i);
}

// d = d * mask * scale * act'(pre)
extern "C" __global__ void act_backward_pre(float* d, const float* pre, unsigned long long n, int act,
                                            int has, unsigned int seed, unsigned int threshold, float scale) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    d[i] = d[i] * drop_factor(has, seed, threshold, scale, (unsigned int)i) * act_grad(act, pre[i]);
}

// ---- normalisations (src/ops/norm.rs) -------------------------------------------------------

// Block-wide sum of a double (blockDim.x = 128), the result in every thread.
__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
        __syncthreads();
    }
    double s = shared[0];
    __syncthreads();
    return s;
}

// One block per row: sum = a + dropout(b); out = LN(sum)·γ + β; stats = [mean; rstd].
extern "C" __global__ void add_layernorm_forward(const float* a, const float* b, float* sum, float* out, float* stats,
                                                 const float* gamma, const float* beta, int rows, int cols, float eps,
                                                 int has, unsigned int seed, unsigned int threshold, float scale) {
    __shared__ double acc[128];
    int r = blockIdx.x;
    unsigned long long base = (unsigned long long)r * cols;
    double s = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = a[base + j] + b[base + j] * drop_factor(has, seed, threshold, scale, (unsigned int)(base + j));
        sum[base + j] = v;
        s += v;
    }
    double mu = block_sum(s, acc) / cols;
    double q = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) { double d = sum[base + j] - mu; q += d * d; }
    double var = block_sum(q, acc) / cols;
    float inv = (float)(1.0 / sqrt(var + eps)), muf = (float)mu;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) out[base + j] = (sum[base + j] - muf) * inv * gamma[j] + beta[j];
    if (threadIdx.x == 0) { stats[r] = muf; stats[rows + r] = inv; }
}

// One block per row: dsum = rstd·(dout·γ − mean(dout·γ) − x̂·mean(dout·γ·x̂)); db = dsum·mask.
extern "C" __global__ void layernorm_backward_rows(const float* dout, const float* sum, const float* stats, const float* gamma,
                                                   float* dsum, float* db, int rows, int cols,
                                                   int has, unsigned int seed, unsigned int threshold, float scale) {
    __shared__ double acc[128];
    int r = blockIdx.x;
    unsigned long long base = (unsigned long long)r * cols;
    float mu = stats[r], inv = stats[rows + r];
    double s1 = 0.0, s2 = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float xhat = (sum[base + j] - mu) * inv, dn = dout[base + j] * gamma[j];
        s1 += dn; s2 += dn * xhat;
    }
    float m1 = (float)(block_sum(s1, acc) / cols), m2 = (float)(block_sum(s2, acc) / cols);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float xhat = (sum[base + j] - mu) * inv;
        float g = inv * (dout[base + j] * gamma[j] - m1 - xhat * m2);
        dsum[base + j] = g;
        db[base + j] = g * drop_factor(has, seed, threshold, scale, (unsigned int)(base + j));
    }
}

// dγ[c] (+)= Σ_r dout·x̂, dβ[c] (+)= Σ_r dout; one thread per column.
extern "C" __global__ void layernorm_param_grads(const float* dout, const float* sum, const float* stats, float* dgamma, float* dbeta,
                                                 int rows, int cols, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float g = accumulate ? dgamma[c] : 0.0f, b = accumulate ? dbeta[c] : 0.0f;
    for (int r = 0; r < rows; ++r) {
        unsigned long long k = (unsigned long long)r * cols + c;
        g += dout[k] * (sum[k] - stats[r]) * stats[rows + r];
        b += dout[k];
    }
    dgamma[c] = g;
    dbeta[c] = b;
}

// Per (group, column): mean and biased variance (two passes, double) into stats [means; vars].
extern "C" __global__ void batchnorm_moments(const float* x, float* stats, int group_rows, int groups, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= groups * cols) return;
    int g = i / cols, c = i % cols;
    const float* xg = x + (unsigned long long)g * group_rows * cols;
    double s = 0.0;
    for (int r = 0; r < group_rows; ++r) s += xg[(unsigned long long)r * cols + c];
    double mu = s / group_rows, q = 0.0;
    for (int r = 0; r < group_rows; ++r) { double d = xg[(unsigned long long)r * cols + c] - (float)mu; q += d * d; }
    stats[i] = (float)mu;
    stats[groups * cols + i] = (float)(q / group_rows);
}

// Training: the running update in group order, then variances → rstd. Evaluation: stats from the
// running statistics. One thread per column.
extern "C" __global__ void batchnorm_finish_stats(float* stats, float* running, int group_rows, int groups, int cols,
                                                  float eps, float momentum, int train) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float* rmean = running;
    float* rvar = running + cols;
    for (int g = 0; g < groups; ++g) {
        int i = g * cols + c;
        if (train) {
            float unbiased = (float)group_rows / (float)(group_rows > 1 ? group_rows - 1 : 1);
            rmean[c] = (1.0f - momentum) * rmean[c] + momentum * stats[i];
            rvar[c] = (1.0f - momentum) * rvar[c] + momentum * stats[groups * cols + i] * unbiased;
            stats[groups * cols + i] = 1.0f / sqrtf(stats[groups * cols + i] + eps);
        } else {
            stats[i] = rmean[c];
            stats[groups * cols + i] = 1.0f / sqrtf(rvar[c] + eps);
        }
    }
}

extern "C" __global__ void batchnorm_normalize(const float* x, float* out, const float* stats, const float* gamma, const float* beta,
                                               unsigned long long n, int group_rows, int groups, int cols, int relu) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    int c = (int)(i % cols);
    int g = (int)(i / cols / group_rows);
    float y = (x[i] - stats[g * cols + c]) * stats[groups * cols + g * cols + c] * gamma[c] + beta[c];
    out[i] = (relu && y < 0.0f) ? 0.0f : y;
}

// BatchNorm (+ ReLU) then MaxPool1d(2) over each sample's pool_len rows, one thread per pooled
// element (n of them): the larger of rows 2t and 2t + 1 after the normalisation, argmax 1.0 where
// it is the second (as maxpool_forward).
extern "C" __global__ void batchnorm_normalize_pool(const float* x, float* out, float* argmax, const float* stats, const float* gamma,
                                                    const float* beta, unsigned long long n, int group_rows, int groups, int cols,
                                                    int relu, int pool_len) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    int half = pool_len / 2;
    int c = (int)(i % cols);
    unsigned long long t = i / cols;
    unsigned long long s = t / half;
    unsigned long long row = s * pool_len + 2 * (t % half);
    int g = (int)(row / group_rows);
    float mu = stats[g * cols + c], inv = stats[groups * cols + g * cols + c];
    float u = (x[row * cols + c] - mu) * inv * gamma[c] + beta[c];
    float v = (x[(row + 1) * cols + c] - mu) * inv * gamma[c] + beta[c];
    // As the CPU's relu: a NaN stays NaN (the step's non-finite check must see it).
    if (relu) { u = u < 0.0f ? 0.0f : u; v = v < 0.0f ? 0.0f : v; }
    int second = v > u || isnan(v);
    out[i] = second ? v : u;
    argmax[i] = second ? 1.0f : 0.0f;
}

// The gradient reaching BatchNorm's output at (row r, column c) of its input's shape: dout masked
// by the ReLU (out > 0), routed back through the MaxPool where pool_len > 0 (as maxpool_backward).
__device__ float batchnorm_upstream(const float* dout, const float* out, const float* argmax, unsigned long long r, int c, int cols,
                                    int relu, int pool_len) {
    unsigned long long k = r * cols + c;
    if (pool_len > 0) {
        int half = pool_len / 2;
        int t = (int)(r % pool_len);
        if (t / 2 >= half) return 0.0f;
        k = ((r / pool_len) * half + t / 2) * cols + c;
        if ((t % 2 == 1) != (argmax[k] > 0.5f)) return 0.0f;
    }
    return (relu && !(out[k] > 0.0f)) ? 0.0f : dout[k];
}

// Per (group, column): Σdy and Σdy·x̂ into sums [Σdy; Σdy·x̂], dy from batchnorm_upstream.
extern "C" __global__ void batchnorm_backward_sums(const float* dout, const float* out, const float* argmax, const float* x, const float* stats,
                                                   float* sums, int group_rows, int groups, int cols, int relu, int pool_len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= groups * cols) return;
    int g = i / cols, c = i % cols;
    float mu = stats[i], inv = stats[groups * cols + i];
    double a = 0.0, b = 0.0;
    for (int r = 0; r < group_rows; ++r) {
        unsigned long long row = (unsigned long long)g * group_rows + r;
        float d = batchnorm_upstream(dout, out, argmax, row, c, cols, relu, pool_len);
        a += d;
        b += d * (x[row * cols + c] - mu) * inv;
    }
    sums[i] = (float)a;
    sums[groups * cols + i] = (float)b;
}

extern "C" __global__ void batchnorm_param_grads(const float* sums, float* dgamma, float* dbeta, int groups, int cols, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float g = accumulate ? dgamma[c] : 0.0f, b = accumulate ? dbeta[c] : 0.0f;
    for (int k = 0; k < groups; ++k) { b += sums[k * cols + c]; g += sums[groups * cols + k * cols + c]; }
    dgamma[c] = g;
    dbeta[c] = b;
}

extern "C" __global__ void batchnorm_backward_dx(const float* dout, const float* out, const float* argmax, const float* x, float* dx,
                                                 const float* stats, const float* sums, const float* gamma, unsigned long long n,
                                                 int group_rows, int groups, int cols, int relu, int pool_len) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    int c = (int)(i % cols);
    unsigned long long row = i / cols;
    int g = (int)(row / group_rows);
    int k = g * cols + c;
    float mu = stats[k], inv = stats[groups * cols + k];
    float mean_dy = sums[k] / group_rows, mean_dyx = sums[groups * cols + k] / group_rows;
    float xhat = (x[i] - mu) * inv;
    float d = batchnorm_upstream(dout, out, argmax, row, c, cols, relu, pool_len);
    dx[i] = gamma[c] * inv * (d - mean_dy - xhat * mean_dyx);
}

// ---- convolution and pooling (src/ops/conv1d.rs, src/ops/pool.rs) ---------------------------

// cols[s·Lout + t, k·C + c] = x[s, t·stride − pad + k, c] (tap-major); one thread per element of cols.
extern "C" __global__ void im2col(const float* x, float* cols, int samples, int len_in, int channels, int kernel, int stride, int pad, int len_out) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long width = (unsigned long long)channels * kernel;
    if (i >= (unsigned long long)samples * len_out * width) return;
    int col = (int)(i % width);
    unsigned long long row = i / width;
    int t = (int)(row % len_out), s = (int)(row / len_out);
    int k = col / channels, c = col % channels;
    int pos = t * stride - pad + k;
    cols[i] = (pos >= 0 && pos < len_in) ? x[((unsigned long long)s * len_in + pos) * channels + c] : 0.0f;
}

// dx[s, pos, c] = Σ over (t, k) with t·stride − pad + k = pos of dcols[...]; one thread per element of dx (a gather: no atomics).
extern "C" __global__ void col2im(const float* dcols, float* dx, int samples, int len_in, int channels, int kernel, int stride, int pad, int len_out) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)samples * len_in * channels) return;
    int c = (int)(i % channels);
    int pos = (int)((i / channels) % len_in);
    int s = (int)(i / channels / len_in);
    float acc = 0.0f;
    for (int k = 0; k < kernel; ++k) {
        int num = pos + pad - k;
        if (num < 0 || num % stride != 0) continue;
        int t = num / stride;
        if (t >= len_out) continue;
        acc += dcols[((unsigned long long)s * len_out + t) * channels * kernel + k * channels + c];
    }
    dx[i] = acc;
}

// dst[o, j, i] (+)= src[o, i, j] for src [outer, rows, cols]; one thread per element.
extern "C" __global__ void transpose_inner(const float* src, float* dst, unsigned long long n, int rows, int cols, int accumulate) {
    unsigned long long e = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (e >= n) return;
    unsigned long long per = (unsigned long long)rows * cols;
    unsigned long long o = e / per, r = e % per;
    int i = (int)(r / cols), j = (int)(r % cols);
    unsigned long long d = o * per + (unsigned long long)j * rows + i;
    dst[d] = accumulate ? dst[d] + src[e] : src[e];
}

// dst[c, k, o] = w[o, c, K-1-k] for w[out, C, K]: the taps of a stride-1 convolution's input
// gradient taken as a convolution of dy.
extern "C" __global__ void conv_transposed_taps(const float* w, float* dst, int out, int channels, int kernel) {
    long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= (long long)out * channels * kernel) return;
    int o = (int)(e / ((long long)channels * kernel)), r = (int)(e % ((long long)channels * kernel));
    int c = r / kernel, k = r % kernel;
    dst[((long long)c * kernel + (kernel - 1 - k)) * out + o] = w[e];
}

// out[s, t, c] = max(x[s, 2t, c], x[s, 2t+1, c]); argmax 1.0 where the second is larger (or NaN).
extern "C" __global__ void maxpool_forward(const float* x, float* out, float* argmax, int samples, int len, int cols) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    int lo = len / 2;
    if (i >= (unsigned long long)samples * lo * cols) return;
    int c = (int)(i % cols);
    int t = (int)((i / cols) % lo);
    int s = (int)(i / cols / lo);
    unsigned long long base = ((unsigned long long)s * len + 2 * t) * cols + c;
    float u = x[base], v = x[base + cols];
    int second = v > u || isnan(v);
    out[i] = second ? v : u;
    argmax[i] = second ? 1.0f : 0.0f;
}

// One thread per element of dx.
extern "C" __global__ void maxpool_backward(const float* dout, const float* argmax, float* dx, int samples, int len, int cols) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)samples * len * cols) return;
    int c = (int)(i % cols);
    int t = (int)((i / cols) % len);
    int s = (int)(i / cols / len);
    int lo = len / 2;
    float g = 0.0f;
    if (t / 2 < lo) {
        unsigned long long k = ((unsigned long long)s * lo + t / 2) * cols + c;
        int second = argmax[k] > 0.5f;
        if ((t % 2 == 1) == second) g = dout[k];
    }
    dx[i] = g;
}

extern "C" __global__ void meanpool_forward(const float* x, float* out, int samples, int len, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= samples * cols) return;
    int c = i % cols, s = i / cols;
    float acc = 0.0f;
    for (int t = 0; t < len; ++t) acc += x[((unsigned long long)s * len + t) * cols + c];
    out[i] = acc * (1.0f / len);
}

extern "C" __global__ void meanpool_backward(const float* dout, float* dx, int samples, int len, int cols) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)samples * len * cols) return;
    int c = (int)(i % cols);
    int s = (int)(i / cols / len);
    dx[i] = dout[s * cols + c] * (1.0f / len);
}

// ---- attention (src/ops/attention.rs) -------------------------------------------------------
// One thread per query row (forward, dQ) or key row (dK, dV) of a (sample, head): the weights are
// recomputed from lse, never stored. Rows of qkv are [Q | K | V], heads split along d.

__device__ __forceinline__ float dotp(const float* a, const float* b, int n) {
    float s = 0.0f;
    for (int p = 0; p < n; ++p) s += a[p] * b[p];
    return s;
}

// One thread of an attention kernel: the (pair, row) of its flat index — pair = sample × heads +
// head, row the query (forward, dQ) or key (dK, dV) it owns —, its head's base in qkv, the softmax
// scale 1/√dh and the pair's dropout seed.
struct AttentionThread {
    unsigned long long idx;
    int row, pair, s, h, d;
    const float* base;
    float scale;
    unsigned int seed;
};

// Fills `t` for this thread; false for the threads past the last (pair, row).
__device__ __forceinline__ bool attention_thread(AttentionThread* t, const float* qkv, int samples, int seq, int heads, int dh,
                                                 int has, unsigned long long key) {
    t->idx = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (t->idx >= (unsigned long long)samples * heads * seq) return false;
    t->row = (int)(t->idx % seq);
    t->pair = (int)(t->idx / seq);
    t->s = t->pair / heads;
    t->h = t->pair % heads;
    t->d = heads * dh;
    t->base = qkv + (unsigned long long)t->s * seq * 3 * t->d + t->h * dh;
    t->scale = 1.0f / sqrtf((float)dh);
    t->seed = has ? key_seed(mix_key(key, 0xA7, t->pair)) : 0u;
    return true;
}

// Per (pair, i): lse_i, out_i = Σ_j softmax_ij · mask_ij · V_j.
extern "C" __global__ void attention_forward(const float* qkv, float* out, float* lse, int samples, int seq, int heads, int dh,
                                             int has, unsigned long long key, unsigned int threshold, float scale_drop) {
    AttentionThread t;
    if (!attention_thread(&t, qkv, samples, seq, heads, dh, has, key)) return;
    int i = t.row, d = t.d;
    const float* q = t.base + (unsigned long long)i * 3 * d;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j < seq; ++j) {
        float sc = dotp(q, t.base + (unsigned long long)j * 3 * d + d, dh) * t.scale;
        float mn = fmaxf(m, sc);
        l = l * expf(m - mn) + expf(sc - mn);
        m = mn;
    }
    float li = m + logf(l);
    lse[t.idx] = li;
    float* o = out + ((unsigned long long)t.s * seq + i) * d + t.h * dh;
    for (int p = 0; p < dh; ++p) o[p] = 0.0f;
    for (int j = 0; j < seq; ++j) {
        const float* kr = t.base + (unsigned long long)j * 3 * d;
        float w = expf(dotp(q, kr + d, dh) * t.scale - li) * drop_factor(has, t.seed, threshold, scale_drop, (unsigned int)(i * seq + j));
        for (int p = 0; p < dh; ++p) o[p] += w * kr[2 * d + p];
    }
}

// The two attention backward kernels take the same argument list (the launcher passes both the same values).
#define ATTENTION_BACKWARD_PARAMS const float* qkv, const float* out, const float* lse, const float* dout, float* dqkv, \
    int samples, int seq, int heads, int dh, int has, unsigned long long key, unsigned int threshold, float scale_drop

// Per (pair, i): dQ_i = Σ_j dS_ij K_j / √dh, dS = P·(dA·mask − D_i), D_i = dO_i·O_i.
extern "C" __global__ void attention_backward_q(ATTENTION_BACKWARD_PARAMS) {
    AttentionThread t;
    if (!attention_thread(&t, qkv, samples, seq, heads, dh, has, key)) return;
    int i = t.row, d = t.d;
    const float* q = t.base + (unsigned long long)i * 3 * d;
    unsigned long long orow = ((unsigned long long)t.s * seq + i) * d + t.h * dh;
    float di = dotp(dout + orow, out + orow, dh);
    float* dq = dqkv + (q - qkv);
    for (int p = 0; p < dh; ++p) dq[p] = 0.0f;
    for (int j = 0; j < seq; ++j) {
        const float* kr = t.base + (unsigned long long)j * 3 * d;
        float pr = expf(dotp(q, kr + d, dh) * t.scale - lse[t.idx]);
        float da = dotp(dout + orow, kr + 2 * d, dh);
        float ds = pr * (da * drop_factor(has, t.seed, threshold, scale_drop, (unsigned int)(i * seq + j)) - di);
        for (int p = 0; p < dh; ++p) dq[p] += ds * t.scale * kr[d + p];
    }
}

// Per (pair, j): dK_j = Σ_i dS_ij Q_i / √dh, dV_j = Σ_i A_ij dO_i.
extern "C" __global__ void attention_backward_kv(ATTENTION_BACKWARD_PARAMS) {
    AttentionThread t;
    if (!attention_thread(&t, qkv, samples, seq, heads, dh, has, key)) return;
    int j = t.row, d = t.d;
    const float* kr = t.base + (unsigned long long)j * 3 * d;
    float* g = dqkv + (kr - qkv);
    for (int p = 0; p < dh; ++p) { g[d + p] = 0.0f; g[2 * d + p] = 0.0f; }
    for (int i = 0; i < seq; ++i) {
        const float* q = t.base + (unsigned long long)i * 3 * d;
        unsigned long long orow = ((unsigned long long)t.s * seq + i) * d + t.h * dh;
        float pr = expf(dotp(q, kr + d, dh) * t.scale - lse[(unsigned long long)t.pair * seq + i]);
        float mk = drop_factor(has, t.seed, threshold, scale_drop, (unsigned int)(i * seq + j));
        float di = dotp(dout + orow, out + orow, dh);
        float ds = pr * (dotp(dout + orow, kr + 2 * d, dh) * mk - di);
        for (int p = 0; p < dh; ++p) {
            g[d + p] += ds * t.scale * q[p];
            g[2 * d + p] += pr * mk * dout[orow + p];
        }
    }
}
#undef ATTENTION_BACKWARD_PARAMS

// ---- patch embedding (src/ops/patch.rs) -----------------------------------------------------

// starts = [sL; sC]: random (has_key) or evenly spaced.
extern "C" __global__ void patch_starts(float* starts, int samples, int patches, int window, int channels, int patch_len, int patch_channels,
                                        int has_key, unsigned int seed) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n = samples * patches;
    if (i >= n) return;
    unsigned int range_l = window - patch_len + 1, range_c = channels - patch_channels + 1;
    float t, c;
    if (has_key) {
        t = (float)(((unsigned long long)mask_bits(seed, (unsigned int)i) * range_l) >> 32);
        c = (float)(((unsigned long long)mask_bits(seed, (unsigned int)n + (unsigned int)i) * range_c) >> 32);
    } else {
        int p = i % patches;
        int denom = patches > 1 ? patches - 1 : 1;
        t = rintf((float)p * (float)(window - patch_len) / (float)denom);
        c = (float)(p % range_c);
    }
    starts[i] = t;
    starts[n + i] = c;
}

// out[s·P + p, l·2Cp + j]: the value x[s, sL + l, sC + j] (j < Cp), or the time (sL + l) / rate[s].
extern "C" __global__ void patch_gather(const float* x, const float* rates, const float* starts, float* out,
                                        int samples, int patches, int window, int channels, int patch_len, int patch_channels) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    int row_len = 2 * patch_len * patch_channels;
    unsigned long long n = (unsigned long long)samples * patches;
    if (i >= n * row_len) return;
    int col = (int)(i % row_len);
    unsigned long long pr = i / row_len;
    int s = (int)(pr / patches);
    int l = col / (2 * patch_channels), j = col % (2 * patch_channels);
    int t = (int)starts[pr] + l;
    if (j < patch_channels) {
        int c = (int)starts[n + pr] + j;
        out[i] = x[((unsigned long long)s * window + t) * channels + c];
    } else {
        out[i] = (float)t / rates[s];
    }
}

// ---- loss and optimizer (src/loss.rs, src/optim.rs) -----------------------------------------

// 64 fixed chunks, one block each, tree reduction in shared memory: deterministic.
extern "C" __global__ void sum_squares_partial(const float* x, unsigned long long n, double* partial) {
    __shared__ double acc[256];
    unsigned long long chunk = (n + gridDim.x - 1) / gridDim.x;
    unsigned long long lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    double s = 0.0;
    for (unsigned long long i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * (double)x[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

extern "C" __global__ void adam(float* p, const float* g, float* m, float* v, unsigned long long n,
                                float grad_scale, float l2, float decay, float b1, float b2,
                                float step_size, float bc2_sqrt, float eps) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i];
    float gi = g[i] * grad_scale + l2 * pi;
    pi *= decay;
    float mi = m[i] + (gi - m[i]) * (1.0f - b1);
    float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

// zn = z / max(|z|, 1e-12) per row; norms[r] = max(|z|, 1e-12). One block per row.
extern "C" __global__ void normalize_rows(const float* z, float* zn, float* norms, int d) {
    __shared__ double acc[128];
    int r = blockIdx.x;
    double s = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { double x = z[(unsigned long long)r * d + j]; s += x * x; }
    double n = sqrt(block_sum(s, acc));
    if (n < 1e-12) n = 1e-12;
    float inv = (float)(1.0 / n);
    if (threadIdx.x == 0) norms[r] = (float)n;
    for (int j = threadIdx.x; j < d; j += blockDim.x) zn[(unsigned long long)r * d + j] = z[(unsigned long long)r * d + j] * inv;
}

// Column log-sum-exp of s [b, b] (symmetric form). One thread per column.
extern "C" __global__ void col_lse(const float* s, float* lse, int b) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= b) return;
    float mx = -INFINITY;
    for (int i = 0; i < b; ++i) mx = fmaxf(mx, s[i * b + j]);
    double sum = 0.0;
    for (int i = 0; i < b; ++i) sum += expf(s[i * b + j] - mx);
    lse[j] = mx + (float)log(sum);
}

// Per row: loss term, correctness, and (with grad) s becomes dL/dS in place.
// out[2*i] = lse_i - s_ii (row) , out[2*i+1] = 1 if argmax == i.
extern "C" __global__ void row_softmax_grad(float* s, const float* col_lse, float* out, int b, int symmetric,
                                            int want_grad, float row_w) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b) return;
    float* row = s + (unsigned long long)i * b;
    float mx = -INFINITY;
    int arg = 0;
    for (int j = 0; j < b; ++j) if (row[j] > mx) { mx = row[j]; arg = j; }
    double sum = 0.0;
    for (int j = 0; j < b; ++j) sum += expf(row[j] - mx);
    float lse = mx + (float)log(sum);
    float diag = row[i];
    out[2 * i] = lse - diag;
    out[2 * i + 1] = arg == i ? 1.0f : 0.0f;
    if (symmetric) out[2 * i] = 0.5f * ((lse - diag) + (col_lse[i] - diag));
    if (!want_grad) return;
    for (int j = 0; j < b; ++j) {
        float g = expf(row[j] - lse) - (i == j ? 1.0f : 0.0f);
        if (symmetric) g += expf(row[j] - col_lse[j]) - (i == j ? 1.0f : 0.0f);
        row[j] = g * row_w;
    }
}

// dz = (dzn - zn * (zn . dzn)) / norm, one block per row.
extern "C" __global__ void normalize_backward(float* dz, const float* zn, const float* dzn, const float* norms, int d) {
    __shared__ double acc[128];
    int r = blockIdx.x;
    double s = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += zn[(unsigned long long)r * d + j] * dzn[(unsigned long long)r * d + j];
    float dot = (float)block_sum(s, acc), inv = 1.0f / norms[r];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        unsigned long long k = (unsigned long long)r * d + j;
        dz[k] = (dzn[k] - zn[k] * dot) * inv;
    }
}
