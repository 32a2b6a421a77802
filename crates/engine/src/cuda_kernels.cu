// NVRTC kernels of the CUDA device: the same arithmetic as the CPU device (src/cpu.rs), one
// kernel per CPU kernel, so parity can be checked kernel by kernel.

__device__ __forceinline__ unsigned int dropout_hash(unsigned long long key, unsigned long long index) {
    unsigned long long z = key + index * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned int)((z ^ (z >> 31)) >> 32);
}

extern "C" __global__ void fill(float* x, float v, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

// y = dropout(act(y + b)) in place on [rows, cols]
extern "C" __global__ void bias_act_forward(float* y, const float* b, int rows, int cols, int relu,
                                            int has_dropout, unsigned int threshold, float scale,
                                            unsigned long long key) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)rows * cols) return;
    float x = y[i] + b[i % cols];
    if (relu && x < 0.0f) x = 0.0f;
    if (has_dropout) x = dropout_hash(key, i) >= threshold ? x * scale : 0.0f;
    y[i] = x;
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
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
        __syncthreads();
    }
    double n = sqrt(acc[0]);
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
    __shared__ float acc[128];
    int r = blockIdx.x;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += zn[(unsigned long long)r * d + j] * dzn[(unsigned long long)r * d + j];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) acc[threadIdx.x] += acc[threadIdx.x + w];
        __syncthreads();
    }
    float dot = acc[0], inv = 1.0f / norms[r];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        unsigned long long k = (unsigned long long)r * d + j;
        dz[k] = (dzn[k] - zn[k] * dot) * inv;
    }
}
