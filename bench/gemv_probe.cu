// gemv_probe.cu: times generation's GEMV (libllmc/src/cuda/gemv.cu, compiled in with its knobs:
// -DGEMV_OUT_ROWS=... etc.) alone at one model's product shapes, beside a device-to-device copy
// of the same weight bytes, to tell a product's fixed cost (launch, ramp, reduction, tail) from
// its bytes. Each launch reads its own copy of the weights (a rotation of > 256 MB), so no product
// finds its weights in L2 as a step would not.
//   nvcc -std=c++17 -O3 -arch=sm_90 -Ilibllmc/include -Ilibllmc/src -o /tmp/gemv_probe \
//       bench/gemv_probe.cu
//   /tmp/gemv_probe [C [N...]]   (C channels, default 1600 = d48; N rows of the step, default 1 8)
// Per shape and n: "alone", the median of 30 launches each between two events (no launch before
// it to overlap, as with PDL off); "in a row", 30 launches back to back as programmatic
// dependents captured in a graph (a step's way: host launch costs out of it), per launch; the
// weights' TB/s at that rate; and the copy's time for the same bytes (it also writes them: its
// TB/s counts the bytes once, as the GEMV's does), and the largest error of its first launch
// against an fp32 reference, relative to the largest output. Then the floor of a kernel boundary (empty
// kernels in a PDL chain) and whole layers of GEMVs in a graph, with and without stand-ins
// for the norms and the attention.
#include "cuda/gemv.cu"
#include "probe.cuh"

/* A kernel that does nothing but take part in a programmatic-dependent chain:
 * the floor a step's kernel boundary costs. */
__global__ void empty_kernel() {
    pdl_launch_dependents();
    pdl_wait();
}

/* out (n, OC) = inp (n, IC) @ w^T in fp32, a thread an output: the reference
 * each product's first launch is checked against. */
__global__ void gemv_reference(float *out, const bf16 *inp, const bf16 *w, int n, int IC, int OC) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * OC) return;
    const int j = i / OC, row = i % OC;
    float sum = 0.0f;
    for (int k = 0; k < IC; k++)
        sum += __bfloat162float(inp[(size_t)j * IC + k]) * __bfloat162float(w[(size_t)row * IC + k]);
    out[i] = sum;
}

/* The largest |gemv - reference| over the n x OC outputs, relative to the largest |reference|. */
static float gemv_error(const bf16 *inp, const bf16 *w, int n, int IC, int OC, cudaStream_t s) {
    bf16 *out;
    float *ref;
    CK(cudaMalloc(&out, (size_t)n * OC * sizeof(bf16)));
    CK(cudaMalloc(&ref, (size_t)n * OC * sizeof(float)));
    gemv_forward(out, inp, w, nullptr, n, IC, OC, false, s);
    gemv_reference<<<ceil_div((long)n * OC, 256), 256, 0, s>>>(ref, inp, w, n, IC, OC);
    std::vector<bf16> got((size_t)n * OC);
    std::vector<float> want((size_t)n * OC);
    CK(cudaMemcpyAsync(got.data(), out, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost, s));
    CK(cudaMemcpyAsync(want.data(), ref, want.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    float worst = 0.0f, scale = 0.0f;
    for (size_t i = 0; i < want.size(); i++) {
        worst = std::max(worst, std::fabs(__bfloat162float(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
    }
    CK(cudaFree(out));
    CK(cudaFree(ref));
    return worst / scale;
}

/* Median microseconds of one replay of graph, divided by per. */
static float graph_us(cudaGraphExec_t exec, cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1,
                      int per) {
    std::vector<float> t;
    for (int i = 0; i < 12; i++) {
        CK(cudaEventRecord(e0, s));
        CK(cudaGraphLaunch(exec, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) t.push_back(1000 * ms / per);  // the first replays upload the graph
    }
    return median(t);
}

/* Captures what launch() puts on s into a graph and times its replays. */
template <typename F>
static float captured_us(F launch, cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1, int per) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    launch();
    CK(cudaStreamEndCapture(s, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    const float us = graph_us(exec, s, e0, e1, per);
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    return us;
}

int main(int argc, char **argv) {
    const int C = argc > 1 ? atoi(argv[1]) : 1600;
    std::vector<int> ns;
    for (int i = 2; i < argc; i++) ns.push_back(atoi(argv[i]));
    if (ns.empty()) ns = {1, 8};
    struct Shape {
        const char *name;
        int IC, OC;
    } shapes[] = {{"qkv", C, 3 * C}, {"attproj", C, C}, {"fc", C, 4 * C},
                  {"fcproj", 4 * C, C}, {"head", C, 50304}};
    const int reps = 30;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("C = %d; microseconds a launch (median of %d), weights' TB/s; \"in a row\": %d PDL\n"
           "launches captured in one graph, a replay's time / %d\n", C, reps, reps, reps);
    printf("%-8s %2s %9s | %8s %8s %6s | %8s %6s | %s\n", "product", "n", "MB", "alone", "in a row",
           "TB/s", "copy", "TB/s", "error");
    bf16 *inp, *out;
    CK(cudaMalloc(&inp, (size_t)8 * 4 * C * sizeof(bf16)));
    CK(cudaMalloc(&out, (size_t)8 * 50304 * sizeof(bf16)));
    fill_normal<<<64, 256, 0, s>>>(inp, (size_t)8 * 4 * C, 2);
    for (const Shape &sh : shapes) {
        const size_t elems = (size_t)sh.IC * sh.OC, bytes = elems * sizeof(bf16);
        const int copies = (int)std::max<size_t>(2, ((size_t)256 << 20) / bytes + 1);
        bf16 *w, *dst;
        CK(cudaMalloc(&w, bytes * copies));
        CK(cudaMalloc(&dst, bytes));
        fill_normal<<<1024, 256, 0, s>>>(w, elems * copies, 1);
        CK(cudaStreamSynchronize(s));
        int at = 0;
        auto next = [&] { return w + (size_t)(at++ % copies) * elems; };
        for (int n : ns) {
            const float error = gemv_error(inp, w, n, sh.IC, sh.OC, s);
            for (int i = 0; i < 3; i++)  // warm-up
                gemv_forward(out, inp, next(), nullptr, n, sh.IC, sh.OC, false, s);
            std::vector<float> alone;
            for (int i = 0; i < reps; i++) {
                const bf16 *wi = next();
                CK(cudaEventRecord(e0, s));
                gemv_forward(out, inp, wi, nullptr, n, sh.IC, sh.OC, false, s);
                CK(cudaEventRecord(e1, s));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                alone.push_back(1000 * ms);
            }
            const float row = captured_us(
                [&] {
                    for (int i = 0; i < reps; i++)
                        gemv_forward(out, inp, next(), nullptr, n, sh.IC, sh.OC, false, s);
                },
                s, e0, e1, reps);
            std::vector<float> copy;
            for (int i = 0; i < reps; i++) {
                const bf16 *wi = next();
                CK(cudaEventRecord(e0, s));
                CK(cudaMemcpyAsync(dst, wi, bytes, cudaMemcpyDeviceToDevice, s));
                CK(cudaEventRecord(e1, s));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                copy.push_back(1000 * ms);
            }
            CK(cudaGetLastError());
            printf("%-8s %2d %9.1f | %8.2f %8.2f %6.2f | %8.2f %6.2f | %.1e%s\n", sh.name, n,
                   bytes / 1e6, median(alone), row, bytes / row / 1e6, median(copy),
                   bytes / median(copy) / 1e6, error, error < 1e-2 ? "" : " WRONG");
        }
        CK(cudaFree(w));
        CK(cudaFree(dst));
    }

    /* The floor of a kernel boundary in a step's graph: empty kernels in a
     * PDL chain, of one block and of a GEMV's grid. */
    const int chain = 200;
    for (int blocks : {1, 400, 1600}) {
        const float us = captured_us(
            [&] {
                for (int i = 0; i < chain; i++)
                    launch_pdl(empty_kernel, dim3(blocks), dim3(64), s);
            },
            s, e0, e1, chain);
        printf("empty PDL kernel, %4d blocks of 64: %.2f us a kernel in a chain of %d\n", blocks,
               us, chain);
    }

    /* A model's layers of GEMVs alone (qkv, attproj, fc, fcproj, each layer its
     * own weights, as a step reads them), with and without a one-block kernel
     * where the norms and the attention stand: what a layer's products cost in a
     * row against the sum of their parts above. */
    const int L = 48;
    const size_t layer_elems = (size_t)12 * C * C;
    bf16 *wl;
    CK(cudaMalloc(&wl, layer_elems * L * sizeof(bf16)));
    fill_normal<<<1024, 256, 0, s>>>(wl, layer_elems * L, 3);
    CK(cudaStreamSynchronize(s));
    for (int n : ns)
        for (bool between : {false, true}) {
            const float us = captured_us(
                [&] {
                    for (int l = 0; l < L; l++) {
                        const bf16 *q = wl + l * layer_elems, *a = q + (size_t)3 * C * C,
                                   *f = a + (size_t)C * C, *p = f + (size_t)4 * C * C;
                        gemv_forward(out, inp, q, nullptr, n, C, 3 * C, false, s);
                        if (between) launch_pdl(empty_kernel, dim3(16), dim3(128), s);
                        gemv_forward(out, inp, a, nullptr, n, C, C, false, s);
                        if (between) launch_pdl(empty_kernel, dim3(n), dim3(256), s);
                        gemv_forward(out, inp, f, nullptr, n, C, 4 * C, true, s);
                        gemv_forward(out, inp, p, nullptr, n, 4 * C, C, false, s);
                        if (between) launch_pdl(empty_kernel, dim3(n), dim3(256), s);
                    }
                },
                s, e0, e1, L);
            printf("n = %d, %d layers of 4 GEMVs%s: %.2f us a layer, %.2f TB/s\n", n, L,
                   between ? " and 3 empty kernels" : "", us, layer_elems * 2 / us / 1e6);
        }
    CK(cudaGetLastError());
    return 0;
}
