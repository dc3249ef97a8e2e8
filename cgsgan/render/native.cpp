// The compiled CPU renderer: the same projection as cgsgan/render/projection.py and the same
// rasterization as cgsgan/render/rasterize.py, written as loops (one Gaussian and camera at a
// time; forward Gaussian by Gaussian front to back, backward pixel by pixel back to front) instead
// of a few hundred whole-array PyTorch operations.
//
// Built on first use by cgsgan/render/native.py (g++ -O3, no torch headers, about a second) and
// called through ctypes with raw pointers to contiguous CPU tensors; the autograd Function there
// owns every buffer. Semantics (gsplat's 3DGS rasterizer, as in rasterize.py):
//   alpha = min(0.999, o exp(-sigma)), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, dx = mean x - (x + 0.5);
//   a pair with sigma < 0 or alpha < 1/255 is skipped; a pixel stops at the Gaussian that would
//   bring its transmittance to 1e-4 or below (that Gaussian excluded).
//
// Table row layout (K = 6 + F columns): mean x, mean y, conic a, b, c, opacity, F features.
// Cameras are independent (each owns its table rows and pixels), so threads take whole cameras
// and the backward pass accumulates without atomics; the projection's threads take whole heads.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxAlpha = 0.999;
constexpr double kTransmittanceEps = 1e-4;

enum Status : int { kOk = 0, kOverflow = 1, kFailed = 2 };

// Runs fn(i) for every i < C (a camera or a head) on up to `threads` threads; returns the worst status.
// With OpenMP the threads are the process's OpenMP pool, the one PyTorch's CPU kernels use (the
// library links the libgomp that torch has already loaded): threads of a second pool would compete
// for the cores with that pool's threads, which spin for a while after each PyTorch operation.
template <typename Fn>
int for_each_index(int64_t C, int threads, Fn fn) {
  std::atomic<int> status{kOk};
  auto run = [&](int64_t c) {
    try {
      int s = fn(c);
      if (s != kOk) status = s;
    } catch (const std::exception&) {  // e.g. bad_alloc: report, never terminate the process
      status = kFailed;
    }
  };
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(1, threads))
  for (int64_t c = 0; c < C; ++c) run(c);
#else
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t c; (c = next++) < C;) run(c);
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < std::min<int64_t>(threads, C); ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
#endif
  return status;
}

template <typename T>
struct Pair {
  int32_t pixel;
  int32_t gauss;
  T alpha;
};

// Forward of one camera. The visible Gaussians are taken front to back, and each is composited
// at once into the pixels of its footprint: on each pixel row, the span of the ellipse
// sigma <= ln(255 o) (a hair wider; the alpha test decides). Every pixel so sees its Gaussians in
// depth order, and once it has stopped (transmittance would fall to 1e-4) later ones skip it
// without evaluating them. The pairs it composited are then sorted by pixel (counting sort,
// depth order kept) into the lists the backward pass walks.
template <typename T>
int forward_camera(int64_t c, const T* table, const T* depths, const int32_t* radii, int64_t N, int64_t K,
                   int64_t W, int64_t H, const int64_t* base, int32_t* list_gauss, T* list_alpha, int64_t* pix_start,
                   int32_t* pix_incl, T* acc, T* final_t) {
  const int64_t F = K - 6, P = W * H;
  const T* tab = table + c * N * K;
  const T* dep = depths + c * N;
  const int32_t* rad = radii + c * N * 2;

  // Visible Gaussians front to back, ties in index order: one sort of (depth, index) pairs, which
  // compares values in place rather than through the index.
  std::vector<std::pair<T, int32_t>> keys;
  for (int32_t n = 0; n < N; ++n)
    if (rad[2 * n] > 0 || rad[2 * n + 1] > 0) keys.emplace_back(dep[n], n);
  std::sort(keys.begin(), keys.end());
  std::vector<int32_t> order(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) order[i] = keys[i].second;

  // Per pixel: transmittance (in double, as rasterize.py sums log-transmittance in float64), the
  // weighted feature sums, whether it has stopped, and how many pairs it composited.
  std::vector<double> trans(P, 1.0), sum(P * F, 0.0);
  std::vector<uint8_t> stopped(P, 0);
  std::vector<int32_t> count(P, 0);
  std::vector<Pair<T>> pairs;  // the composited pairs, in depth order
  for (size_t i = 0; i < order.size(); ++i) {
    // Depth order is random in memory: fetch a later row while this one is worked on.
    if (i + 8 < order.size()) __builtin_prefetch(tab + order[i + 8] * K);
    const int32_t g = order[i];
    const T* row = tab + g * K;
    const T mx = row[0], my = row[1], a = row[2], b = row[3], cc = row[4], o = row[5];
    const T level = std::max(std::log(T(255) * o), T(0)) * T(1 + 1e-5) + T(1e-5);
    const T ry = static_cast<T>(rad[2 * g + 1]);
    const int64_t y0 = std::max<int64_t>(static_cast<int64_t>(std::ceil(my - ry - T(0.5))), 0);
    const int64_t y1 = std::min<int64_t>(static_cast<int64_t>(std::floor(my + ry - T(0.5))), H - 1);
    for (int64_t y = y0; y <= y1; ++y) {
      const T dy = my - (static_cast<T>(y) + T(0.5));
      const T disc = (b * b - a * cc) * dy * dy + T(2) * a * level;
      const T half = std::sqrt(std::max(disc, T(0))) / a;
      const T centre = mx + b * dy / a;
      const int64_t x0 = std::max<int64_t>(static_cast<int64_t>(std::ceil(centre - half - T(0.5))), 0);
      const int64_t x1 = std::min<int64_t>(static_cast<int64_t>(std::floor(centre + half - T(0.5))), W - 1);
      for (int64_t x = x0; x <= x1; ++x) {
        const int64_t pixel = y * W + x;
        if (stopped[pixel]) continue;
        const T dx = mx - (static_cast<T>(x) + T(0.5));
        const T sigma = T(0.5) * (a * dx * dx + cc * dy * dy) + b * dx * dy;
        if (sigma < 0) continue;
        const T alpha = std::min(o * std::exp(-sigma), static_cast<T>(kMaxAlpha));
        if (alpha < static_cast<T>(kAlphaThreshold)) continue;
        const double next = trans[pixel] * (1.0 - static_cast<double>(alpha));
        if (next <= kTransmittanceEps) {  // this Gaussian and every later one are left out
          stopped[pixel] = 1;
          continue;
        }
        const double w = trans[pixel] * static_cast<double>(alpha);
        for (int64_t k = 0; k < F; ++k) sum[pixel * F + k] += w * row[6 + k];
        trans[pixel] = next;
        ++count[pixel];
        pairs.push_back({static_cast<int32_t>(pixel), g, alpha});
      }
    }
  }
  if (static_cast<int64_t>(pairs.size()) > base[c + 1] - base[c]) return kOverflow;

  // Per-pixel lists for the backward pass, in the order the pairs were composited (front to back).
  int64_t* start = pix_start + c * P;
  int64_t offset = base[c];
  for (int64_t p = 0; p < P; ++p) {
    start[p] = offset;
    offset += count[p];
  }
  std::vector<int64_t> cursor(start, start + P);
  for (const auto& q : pairs) {
    const int64_t i = cursor[q.pixel]++;
    list_gauss[i] = q.gauss;
    list_alpha[i] = q.alpha;
  }
  for (int64_t p = 0; p < P; ++p) {
    pix_incl[c * P + p] = count[p];
    final_t[c * P + p] = static_cast<T>(trans[p]);
    for (int64_t k = 0; k < F; ++k) acc[(c * P + p) * F + k] = static_cast<T>(sum[p * F + k]);
  }
  return kOk;
}

// Backward of one camera, per pixel back to front, with w_q = T_q alpha_q and gf_q = g_acc . f_q:
//   dL/df_q     = w_q g_acc
//   dL/dalpha_q = T_q gf_q - (S_q + g_T T_final) / (1 - alpha_q),  S_q = sum over later included k of w_k gf_k
// then through alpha = o exp(-sigma) (nothing where clamped at 0.999) to the opacity, mean and conic.
template <typename T>
int backward_camera(int64_t c, const T* table, int64_t N, int64_t K, int64_t W, int64_t H, const int32_t* list_gauss,
                    const T* list_alpha, const int64_t* pix_start, const int32_t* pix_incl, const T* final_t,
                    const T* g_acc, const T* g_t, T* g_table) {
  const int64_t F = K - 6, P = W * H;
  const T* tab = table + c * N * K;
  T* g_tab = g_table + c * N * K;
  std::vector<double> trans;
  for (int64_t p = 0; p < P; ++p) {
    const int32_t n = pix_incl[c * P + p];
    if (n == 0) continue;
    const int64_t s = pix_start[c * P + p];
    trans.resize(n);
    double t = 1.0;
    for (int32_t q = 0; q < n; ++q) {
      trans[q] = t;
      t *= 1.0 - static_cast<double>(list_alpha[s + q]);
    }
    const T* ga = g_acc + (c * P + p) * F;
    const double g_final = static_cast<double>(g_t[c * P + p]) * static_cast<double>(final_t[c * P + p]);
    const double px = static_cast<double>(p % W) + 0.5, py = static_cast<double>(p / W) + 0.5;
    double later = 0.0;
    for (int32_t q = n - 1; q >= 0; --q) {
      if (q >= 4) __builtin_prefetch(g_tab + list_gauss[s + q - 4] * K, 1);  // rows are random in memory
      const int32_t g = list_gauss[s + q];
      const double alpha = list_alpha[s + q];
      const double w = trans[q] * alpha;
      const T* row = tab + g * K;
      T* g_row = g_tab + g * K;
      double gf = 0.0;
      for (int64_t k = 0; k < F; ++k) {
        gf += static_cast<double>(ga[k]) * static_cast<double>(row[6 + k]);
        g_row[6 + k] += static_cast<T>(w * static_cast<double>(ga[k]));
      }
      const double g_alpha = trans[q] * gf - (later + g_final) / (1.0 - alpha);
      later += w * gf;
      if (list_alpha[s + q] >= static_cast<T>(kMaxAlpha)) continue;  // clamped: no gradient to sigma or o
      const double g_raw = g_alpha * alpha;  // dL/dalpha * alpha = -dL/dsigma
      const double a = row[2], b = row[3], cc = row[4], o = row[5];
      const double dx = static_cast<double>(row[0]) - px, dy = static_cast<double>(row[1]) - py;
      g_row[0] += static_cast<T>(-g_raw * (a * dx + b * dy));
      g_row[1] += static_cast<T>(-g_raw * (cc * dy + b * dx));
      g_row[2] += static_cast<T>(-g_raw * 0.5 * dx * dx);
      g_row[3] += static_cast<T>(-g_raw * dx * dy);
      g_row[4] += static_cast<T>(-g_raw * 0.5 * dy * dy);
      g_row[5] += static_cast<T>(g_raw / o);
    }
  }
  return kOk;
}

template <typename T>
int forward(const T* table, const T* depths, const int32_t* radii, int64_t C, int64_t N, int64_t K, int64_t W,
            int64_t H, const int64_t* base, int32_t* list_gauss, T* list_alpha, int64_t* pix_start,
            int32_t* pix_incl, T* acc, T* final_t, int threads) {
  return for_each_index(C, threads, [&](int64_t c) {
    return forward_camera<T>(c, table, depths, radii, N, K, W, H, base, list_gauss, list_alpha, pix_start,
                             pix_incl, acc, final_t);
  });
}

template <typename T>
int backward(const T* table, int64_t C, int64_t N, int64_t K, int64_t W, int64_t H, const int32_t* list_gauss,
             const T* list_alpha, const int64_t* pix_start, const int32_t* pix_incl, const T* final_t, const T* g_acc,
             const T* g_t, T* g_table, int threads) {
  return for_each_index(C, threads, [&](int64_t c) {
    return backward_camera<T>(c, table, N, K, W, H, list_gauss, list_alpha, pix_start, pix_incl, final_t, g_acc, g_t,
                              g_table);
  });
}


// ------------------------------------------------------------------------------------------------
// Projection (projection.py's `project`, per head b, camera v and Gaussian n). Inputs:
//   means [B, N, 3], sigma [B, N, 6] (the 3D covariance's xx, yy, zz, xy, xz, yz), opacities [B, N],
//   viewmats [B, V, 4, 4] (world to camera), Ks [B, V, 3, 3] (pixels). Cameras are constants.
// Outputs over C = B V cameras: means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2].

constexpr double kEps2d = 0.3;
constexpr double kNearPlane = 0.01;
constexpr double kFarPlane = 1e10;

template <typename T>
struct Camera {
  T r[3][3], t[3], fx, fy, cx, cy;
  T lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;  // the Jacobian's field-of-view clamp of x / z, y / z

  Camera(const T* view, const T* K, int64_t W, int64_t H) {
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) r[i][j] = view[i * 4 + j];
      t[i] = view[i * 4 + 3];
    }
    fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const T tan_fovx = T(0.5) * static_cast<T>(W) / fx, tan_fovy = T(0.5) * static_cast<T>(H) / fy;
    lim_x_pos = (static_cast<T>(W) - cx) / fx + T(0.3) * tan_fovx;
    lim_x_neg = cx / fx + T(0.3) * tan_fovx;
    lim_y_pos = (static_cast<T>(H) - cy) / fy + T(0.3) * tan_fovy;
    lim_y_neg = cy / fy + T(0.3) * tan_fovy;
  }
};

// u^T Sigma v for the symmetric Sigma given by its six entries (xx, yy, zz, xy, xz, yz).
template <typename T>
T quad(const T* s, const T* u, const T* v) {
  return s[0] * u[0] * v[0] + s[1] * u[1] * v[1] + s[2] * u[2] * v[2] + s[3] * (u[0] * v[1] + u[1] * v[0]) +
         s[4] * (u[0] * v[2] + u[2] * v[0]) + s[5] * (u[1] * v[2] + u[2] * v[1]);
}

// Sigma v, and the gradient of u^T Sigma v with respect to the six entries, times g, added to gs.
template <typename T>
void sigma_times(const T* s, const T* v, T* out) {
  out[0] = s[0] * v[0] + s[3] * v[1] + s[4] * v[2];
  out[1] = s[3] * v[0] + s[1] * v[1] + s[5] * v[2];
  out[2] = s[4] * v[0] + s[5] * v[1] + s[2] * v[2];
}

template <typename T>
void add_quad_grad(T g, const T* u, const T* v, T* gs) {
  gs[0] += g * u[0] * v[0];
  gs[1] += g * u[1] * v[1];
  gs[2] += g * u[2] * v[2];
  gs[3] += g * (u[0] * v[1] + u[1] * v[0]);
  gs[4] += g * (u[0] * v[2] + u[2] * v[0]);
  gs[5] += g * (u[1] * v[2] + u[2] * v[1]);
}

// The quantities of one (camera, Gaussian) that both passes need.
template <typename T>
struct Projection {
  T mc[3];         // camera-space mean
  bool in_front;   // z > near plane (else z is replaced by 1 and takes no gradient)
  T rz;            // 1 / z
  T u, v, tx, ty;  // x / z, y / z, and the same clamped to the field of view
  T t0[3], t1[3];  // rows of T = J W
  T a, b, c, det;  // 2D covariance (with the low-pass) and its determinant

  Projection(const Camera<T>& cam, const T* m, const T* s) {
    for (int i = 0; i < 3; ++i) mc[i] = cam.r[i][0] * m[0] + cam.r[i][1] * m[1] + cam.r[i][2] * m[2] + cam.t[i];
    in_front = mc[2] > static_cast<T>(kNearPlane);
    rz = T(1) / (in_front ? mc[2] : T(1));
    u = mc[0] * rz, v = mc[1] * rz;
    tx = std::min(cam.lim_x_pos, std::max(-cam.lim_x_neg, u));
    ty = std::min(cam.lim_y_pos, std::max(-cam.lim_y_neg, v));
    for (int k = 0; k < 3; ++k) {
      t0[k] = cam.fx * rz * (cam.r[0][k] - tx * cam.r[2][k]);
      t1[k] = cam.fy * rz * (cam.r[1][k] - ty * cam.r[2][k]);
    }
    a = quad(s, t0, t0) + static_cast<T>(kEps2d);
    b = quad(s, t0, t1);
    c = quad(s, t1, t1) + static_cast<T>(kEps2d);
    det = a * c - b * b;
  }
};

template <typename T>
int project_forward_head(int64_t bi, const T* means, const T* sigma, const T* opacities, const T* viewmats, const T* Ks,
                         int64_t V, int64_t N, int64_t W, int64_t H, T* means2d, T* conics, T* depths,
                         int32_t* radii) {
  for (int64_t vi = 0; vi < V; ++vi) {
    const int64_t cam_index = bi * V + vi;
    const Camera<T> cam(viewmats + cam_index * 16, Ks + cam_index * 9, W, H);
    for (int64_t n = 0; n < N; ++n) {
      const T* m = means + (bi * N + n) * 3;
      const Projection<T> p(cam, m, sigma + (bi * N + n) * 6);
      const int64_t out = cam_index * N + n;
      const T det = p.det > 0 ? p.det : T(1);
      conics[out * 3 + 0] = p.c / det;
      conics[out * 3 + 1] = -p.b / det;
      conics[out * 3 + 2] = p.a / det;
      const T mx = cam.fx * p.mc[0] * p.rz + cam.cx, my = cam.fy * p.mc[1] * p.rz + cam.cy;
      means2d[out * 2 + 0] = mx;
      means2d[out * 2 + 1] = my;
      depths[out] = p.mc[2];
      // Opacity-aware box (gsplat): extend = min(3.33, sqrt(2 ln(255 o))), culled if it misses the image.
      const T o = opacities[bi * N + n];
      const T extend =
          std::min(std::sqrt(T(2) * std::log(std::max(o / static_cast<T>(kAlphaThreshold), T(1)))), T(3.33));
      const T rx = std::ceil(extend * std::sqrt(std::max(p.a, T(0))));
      const T ry = std::ceil(extend * std::sqrt(std::max(p.c, T(0))));
      const bool visible = p.mc[2] > static_cast<T>(kNearPlane) && p.mc[2] < static_cast<T>(kFarPlane) && p.det > 0 &&
                           o >= static_cast<T>(kAlphaThreshold) && (rx > 0 || ry > 0) && mx + rx > 0 &&
                           mx - rx < static_cast<T>(W) && my + ry > 0 && my - ry < static_cast<T>(H);
      radii[out * 2 + 0] = visible ? static_cast<int32_t>(rx) : 0;
      radii[out * 2 + 1] = visible ? static_cast<int32_t>(ry) : 0;
    }
  }
  return kOk;
}

// The chain rule of project_forward_head, summed over the head's cameras into g_means [N, 3] and
// g_sigma [N, 6] (the head's rows, so heads run on separate threads without atomics).
template <typename T>
int project_backward_head(int64_t bi, const T* means, const T* sigma, const T* viewmats, const T* Ks, int64_t V,
                          int64_t N, int64_t W, int64_t H, const T* g_means2d, const T* g_conics, const T* g_depths,
                          T* g_means, T* g_sigma) {
  for (int64_t vi = 0; vi < V; ++vi) {
    const int64_t cam_index = bi * V + vi;
    const Camera<T> cam(viewmats + cam_index * 16, Ks + cam_index * 9, W, H);
    for (int64_t n = 0; n < N; ++n) {
      const T* m = means + (bi * N + n) * 3;
      const T* s = sigma + (bi * N + n) * 6;
      const Projection<T> p(cam, m, s);
      const int64_t out = cam_index * N + n;
      const T* gc = g_conics + out * 3;
      // conics = (c, -b, a) / det, det = a c - b^2 (1, without gradient, where det <= 0).
      T g_a, g_b, g_c;
      if (p.det > 0) {
        const T inv = T(1) / p.det;
        const T g_det = -(gc[0] * p.c - gc[1] * p.b + gc[2] * p.a) * inv * inv;
        g_a = gc[2] * inv + g_det * p.c;
        g_b = -gc[1] * inv - T(2) * g_det * p.b;
        g_c = gc[0] * inv + g_det * p.a;
      } else {
        g_a = gc[2], g_b = -gc[1], g_c = gc[0];
      }
      // a = t0' S t0 + eps, b = t0' S t1, c = t1' S t1 + eps.
      T* gs = g_sigma + (bi * N + n) * 6;
      add_quad_grad(g_a, p.t0, p.t0, gs);
      add_quad_grad(g_b, p.t0, p.t1, gs);
      add_quad_grad(g_c, p.t1, p.t1, gs);
      T st0[3], st1[3], g_t0[3], g_t1[3];
      sigma_times(s, p.t0, st0);
      sigma_times(s, p.t1, st1);
      for (int k = 0; k < 3; ++k) {
        g_t0[k] = T(2) * g_a * st0[k] + g_b * st1[k];
        g_t1[k] = g_b * st0[k] + T(2) * g_c * st1[k];
      }
      // t0 = fx rz (r0 - tx r2), t1 = fy rz (r1 - ty r2).
      T g_rz = 0, g_tx = 0, g_ty = 0;
      for (int k = 0; k < 3; ++k) {
        g_rz += g_t0[k] * cam.fx * (cam.r[0][k] - p.tx * cam.r[2][k]) + g_t1[k] * cam.fy * (cam.r[1][k] - p.ty * cam.r[2][k]);
        g_tx -= g_t0[k] * cam.fx * p.rz * cam.r[2][k];
        g_ty -= g_t1[k] * cam.fy * p.rz * cam.r[2][k];
      }
      // means2d = (fx x rz + cx, fy y rz + cy); depth = z.
      const T g_mx = g_means2d[out * 2 + 0], g_my = g_means2d[out * 2 + 1];
      T g_mc[3] = {g_mx * cam.fx * p.rz, g_my * cam.fy * p.rz, g_depths[out]};
      g_rz += g_mx * cam.fx * p.mc[0] + g_my * cam.fy * p.mc[1];
      // tx = clamp(x rz), ty = clamp(y rz): the gradient passes where the clamp does not act.
      if (p.u > -cam.lim_x_neg && p.u < cam.lim_x_pos) g_mc[0] += g_tx * p.rz, g_rz += g_tx * p.mc[0];
      if (p.v > -cam.lim_y_neg && p.v < cam.lim_y_pos) g_mc[1] += g_ty * p.rz, g_rz += g_ty * p.mc[1];
      if (p.in_front) g_mc[2] -= g_rz * p.rz * p.rz;  // rz = 1 / z
      // mc = R m + t.
      T* gm = g_means + (bi * N + n) * 3;
      for (int k = 0; k < 3; ++k) gm[k] += cam.r[0][k] * g_mc[0] + cam.r[1][k] * g_mc[1] + cam.r[2][k] * g_mc[2];
    }
  }
  return kOk;
}

template <typename T>
int project_forward(const T* means, const T* sigma, const T* opacities, const T* viewmats, const T* Ks, int64_t B,
                    int64_t V, int64_t N, int64_t W, int64_t H, T* means2d, T* conics, T* depths, int32_t* radii,
                    int threads) {
  return for_each_index(B, threads, [&](int64_t bi) {
    return project_forward_head<T>(bi, means, sigma, opacities, viewmats, Ks, V, N, W, H, means2d, conics, depths,
                                   radii);
  });
}

template <typename T>
int project_backward(const T* means, const T* sigma, const T* viewmats, const T* Ks, int64_t B, int64_t V, int64_t N,
                     int64_t W, int64_t H, const T* g_means2d, const T* g_conics, const T* g_depths, T* g_means,
                     T* g_sigma, int threads) {
  return for_each_index(B, threads, [&](int64_t bi) {
    return project_backward_head<T>(bi, means, sigma, viewmats, Ks, V, N, W, H, g_means2d, g_conics, g_depths, g_means,
                                    g_sigma);
  });
}

}  // namespace

extern "C" {

// ctypes entry points, one pair per precision (float32 for training, float64 for the gradient tests).
#define CGSGAN_ENTRY_POINTS(T, SUFFIX)                                                                          \
  int cgsgan_rasterize_forward_##SUFFIX(const T* table, const T* depths, const int32_t* radii, int64_t C, int64_t N,     \
                              int64_t K, int64_t W, int64_t H, const int64_t* base, int32_t* list_gauss,      \
                              T* list_alpha, int64_t* pix_start, int32_t* pix_incl, T* acc, T* final_t,       \
                              int threads) {                                                                   \
    return forward<T>(table, depths, radii, C, N, K, W, H, base, list_gauss, list_alpha, pix_start, pix_incl, \
                      acc, final_t, threads);                                                                  \
  }                                                                                                            \
  int cgsgan_rasterize_backward_##SUFFIX(const T* table, int64_t C, int64_t N, int64_t K, int64_t W, int64_t H,          \
                               const int32_t* list_gauss, const T* list_alpha, const int64_t* pix_start,       \
                               const int32_t* pix_incl, const T* final_t, const T* g_acc, const T* g_t,        \
                               T* g_table, int threads) {                                                      \
    return backward<T>(table, C, N, K, W, H, list_gauss, list_alpha, pix_start, pix_incl, final_t, g_acc, g_t, \
                       g_table, threads);                                                                      \
  }                                                                                                            \
  int cgsgan_project_forward_##SUFFIX(const T* means, const T* sigma, const T* opacities, const T* viewmats,     \
                                      const T* Ks, int64_t B, int64_t V, int64_t N, int64_t W, int64_t H,         \
                                      T* means2d, T* conics, T* depths, int32_t* radii, int threads) {            \
    return project_forward<T>(means, sigma, opacities, viewmats, Ks, B, V, N, W, H, means2d, conics, depths,    \
                              radii, threads);                                                                 \
  }                                                                                                            \
  int cgsgan_project_backward_##SUFFIX(const T* means, const T* sigma, const T* viewmats, const T* Ks, int64_t B, \
                                       int64_t V, int64_t N, int64_t W, int64_t H, const T* g_means2d,          \
                                       const T* g_conics, const T* g_depths, T* g_means, T* g_sigma,           \
                                       int threads) {                                                          \
    return project_backward<T>(means, sigma, viewmats, Ks, B, V, N, W, H, g_means2d, g_conics, g_depths, g_means, \
                               g_sigma, threads);                                                              \
  }

CGSGAN_ENTRY_POINTS(float, f32)
CGSGAN_ENTRY_POINTS(double, f64)

}  // extern "C"
