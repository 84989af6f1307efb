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
// dependents (a step's way), per launch; the weights' TB/s at that rate; and the copy's time
// for the same bytes (it also writes them: its TB/s counts the bytes once, as the GEMV's does).
#include "cuda/gemv.cu"
#include "probe.cuh"

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
    printf("C = %d; microseconds a launch (median of %d), weights' TB/s\n", C, reps);
    printf("%-8s %2s %9s | %8s %8s %6s | %8s %6s\n", "product", "n", "MB", "alone", "in a row",
           "TB/s", "copy", "TB/s");
    for (const Shape &sh : shapes) {
        const size_t elems = (size_t)sh.IC * sh.OC, bytes = elems * sizeof(bf16);
        const int copies = (int)std::max<size_t>(2, ((size_t)256 << 20) / bytes + 1);
        bf16 *w, *inp, *out, *dst;
        CK(cudaMalloc(&w, bytes * copies));
        CK(cudaMalloc(&dst, bytes));
        CK(cudaMalloc(&inp, (size_t)8 * sh.IC * sizeof(bf16)));
        CK(cudaMalloc(&out, (size_t)8 * sh.OC * sizeof(bf16)));
        fill_normal<<<1024, 256, 0, s>>>(w, elems * copies, 1);
        fill_normal<<<64, 256, 0, s>>>(inp, (size_t)8 * sh.IC, 2);
        CK(cudaStreamSynchronize(s));
        int at = 0;
        auto next = [&] { return w + (size_t)(at++ % copies) * elems; };
        for (int n : ns) {
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
            std::vector<const bf16 *> ws;
            for (int i = 0; i < reps; i++) ws.push_back(next());
            CK(cudaEventRecord(e0, s));
            for (const bf16 *wi : ws) gemv_forward(out, inp, wi, nullptr, n, sh.IC, sh.OC, false, s);
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const float row = 1000 * ms / reps;
            std::vector<float> copy;
            for (int i = 0; i < reps; i++) {
                const bf16 *wi = next();
                CK(cudaEventRecord(e0, s));
                CK(cudaMemcpyAsync(dst, wi, bytes, cudaMemcpyDeviceToDevice, s));
                CK(cudaEventRecord(e1, s));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&ms, e0, e1));
                copy.push_back(1000 * ms);
            }
            CK(cudaGetLastError());
            printf("%-8s %2d %9.1f | %8.2f %8.2f %6.2f | %8.2f %6.2f\n", sh.name, n, bytes / 1e6,
                   median(alone), row, bytes / row / 1e6, median(copy),
                   bytes / median(copy) / 1e6);
        }
        CK(cudaFree(w));
        CK(cudaFree(dst));
        CK(cudaFree(inp));
        CK(cudaFree(out));
    }
    return 0;
}
