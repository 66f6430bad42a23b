// C++ unit test of the sswp_fast InfoNCE op (csrc/), built and run by the standalone CMake build (ctest).
// CPU only, no GPU needed. Against a naive full-matrix formula written here in ATen, it checks:
//   (a) info_nce_forward_cpu: loss, lse and rank;
//   (b) info_nce_backward_cpu: the gradient equals autograd through the naive formula;
//   (c) both ops are reachable through the dispatcher (schemas + CPU kernels registered, same results), and
//       the CUDA kernels are registered exactly when the CUDA library is linked (SSWP_FAST_TEST_CUDA);
//   (d) bad inputs throw c10::Error.
// Every failed check prints a FAIL line and the test goes on; main returns 1 when any check failed.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>

#include "info_nce.h"

#ifndef SSWP_FAST_TEST_CUDA
#define SSWP_FAST_TEST_CUDA 0
#endif

namespace {

int g_checks = 0;
int g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

// |actual - expected| <= tol * (1 + |expected|) elementwise, compared in fp64; reports the worst element
void check_close(const at::Tensor& actual, const at::Tensor& expected, double tol, const std::string& what) {
  at::Tensor a = actual.detach().to(at::kDouble);
  at::Tensor e = expected.detach().to(at::kDouble);
  if (a.sizes() != e.sizes()) {
    check(false, what + ": shape " + c10::str(a.sizes()) + " != expected " + c10::str(e.sizes()));
    return;
  }
  at::Tensor excess = (a - e).abs() - tol * (1 + e.abs());
  const bool finite = a.isfinite().all().item<bool>();
  const double worst = excess.numel() ? excess.max().item<double>() : -1.0;
  std::ostringstream message;
  message << what << ": " << (finite ? "" : "non-finite values; ") << "max |diff| "
          << ((a - e).abs().max().item<double>()) << " exceeds the tolerance " << tol << " (x (1 + |expected|))";
  check(finite && worst <= 0, message.str());
}

struct Naive {
  at::Tensor loss, lse, rank_low, rank_high;
};

// The textbook InfoNCE over the full 2N x 2N matrix: z = normalize(f); s = z z^T / tau with the self entries
// masked to -inf; loss = mean_i(logsumexp_j s_ij - s_{i,p(i)}); rank_i = #{j != i, p(i) : s_ij > s_{i,p(i)}}.
// Near-ties decide a rank by rounding, so the rank comes as bounds: negatives above the positive by more than
// tie_eps (low) and those not below it by more than tie_eps (high); tie_eps = 0 gives the exact count twice.
Naive naive_info_nce(const at::Tensor& f, double tau, double tie_eps) {
  const int64_t rows = f.size(0);
  at::Tensor z = f / f.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
  at::Tensor s = z.mm(z.t()) / tau;
  at::Tensor self = at::eye(rows, f.options().dtype(at::kBool));
  at::Tensor partner = (at::arange(rows, f.options().dtype(at::kLong)) + rows / 2) % rows;
  at::Tensor masked = s.masked_fill(self, -std::numeric_limits<double>::infinity());
  at::Tensor lse = at::logsumexp(masked, {1});
  at::Tensor positive = s.gather(1, partner.unsqueeze(1)).squeeze(1);
  at::Tensor negative = self.logical_not().scatter(1, partner.unsqueeze(1), false);  // j != i and j != p(i)
  at::Tensor sd = s.detach();
  at::Tensor pd = positive.detach().unsqueeze(1);
  at::Tensor low = (sd.gt(pd + tie_eps) & negative).sum(1);
  at::Tensor high = (sd.gt(pd - tie_eps) & negative).sum(1);
  return {(lse - positive).mean(), lse, low, high};
}

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, double);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double);

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

struct Case {
  int64_t n;  // samples: the features have 2n rows
  int64_t d;
  double tau;
  at::ScalarType dtype;
};

std::string describe(const Case& c) {
  std::ostringstream out;
  out << "N=" << c.n << " D=" << c.d << " tau=" << c.tau << " " << c.dtype;
  return out.str();
}

void check_case(const Case& c) {
  const std::string name = describe(c);
  const bool fp64 = c.dtype == at::kDouble;
  const double tol = fp64 ? 1e-9 : 1e-5;  // relative to 1 + |expected|; the truth is computed in fp64
  at::Tensor features = at::randn({2 * c.n, c.d}, at::TensorOptions().dtype(c.dtype));
  const double grad_scale = 0.75;

  // the naive formula in fp64, its gradient by autograd
  at::Tensor truth_in = features.to(at::kDouble).clone().requires_grad_(true);  // a copy also for fp64
  // rank: exact in fp64; fp32 logits carry rounding errors of ~1e-7 / tau, so near-ties may go either way
  Naive truth = naive_info_nce(truth_in, c.tau, fp64 ? 0.0 : 1e-5 / c.tau);
  truth.loss.backward(at::full({}, grad_scale, truth_in.options().requires_grad(false)));
  at::Tensor truth_grad = truth_in.grad();

  // (a) forward
  auto [loss, lse, rank] = sswp_fast::info_nce_forward_cpu(features, c.tau);
  check(loss.dim() == 0 && loss.scalar_type() == c.dtype, name + ": loss is a scalar in the features' dtype");
  check_close(loss, truth.loss, tol, name + ": forward loss vs the naive formula");
  check_close(lse, truth.lse, tol, name + ": forward lse vs the naive logsumexp");
  check(rank.scalar_type() == at::kLong && rank.sizes() == truth.rank_low.sizes(),
        name + ": rank is int64 with one entry per row");
  if (rank.sizes() == truth.rank_low.sizes()) {
    at::Tensor outside = rank.lt(truth.rank_low) | rank.gt(truth.rank_high);
    const int64_t wrong = outside.sum().item<int64_t>();
    check(wrong == 0, name + ": rank vs the naive count of negatives above the positive: " + std::to_string(wrong) +
                          " rows differ (sum of ranks " + std::to_string(rank.sum().item<int64_t>()) + ", naive " +
                          std::to_string(truth.rank_low.sum().item<int64_t>()) + ")");
  }

  // (b) backward
  at::Tensor grad_loss = at::full({}, grad_scale, features.options());
  at::Tensor grad = sswp_fast::info_nce_backward_cpu(grad_loss, features, lse, c.tau);
  check(grad.scalar_type() == c.dtype, name + ": gradient in the features' dtype");
  check_close(grad, truth_grad, tol, name + ": backward vs autograd through the naive formula");

  // (c) the same through the dispatcher
  auto forward = find_op("sswp_fast::info_nce_forward").typed<Forward>();
  auto backward = find_op("sswp_fast::info_nce_backward").typed<Backward>();
  auto [d_loss, d_lse, d_rank] = forward.call(features, c.tau);
  check_close(d_loss, loss, 1e-12, name + ": dispatcher forward loss vs the direct call");
  check(at::equal(d_rank, rank), name + ": dispatcher forward rank vs the direct call");
  check_close(backward.call(grad_loss, features, d_lse, c.tau), grad, 1e-12,
              name + ": dispatcher backward vs the direct call");
}

// (d) the call must throw c10::Error (any other outcome is a failure)
void check_throws(const std::string& what, const std::function<void()>& call) {
  try {
    call();
    check(false, what + ": no c10::Error thrown");
  } catch (const c10::Error&) {
    check(true, what);
  } catch (const std::exception& e) {
    check(false, what + ": threw a non-c10 exception: " + e.what());
  }
}

void check_bad_inputs() {
  const at::Tensor good = at::randn({6, 4}, at::kDouble);
  const at::Tensor lse = std::get<1>(sswp_fast::info_nce_forward_cpu(good, 0.1));
  const at::Tensor one = at::ones({}, at::kDouble);
  check_throws("odd number of rows", [] { sswp_fast::info_nce_forward_cpu(at::randn({5, 4}), 0.1); });
  check_throws("a single row", [] { sswp_fast::info_nce_forward_cpu(at::randn({1, 4}), 0.1); });
  check_throws("3-D features", [] { sswp_fast::info_nce_forward_cpu(at::randn({2, 3, 4}), 0.1); });
  check_throws("int features", [] { sswp_fast::info_nce_forward_cpu(at::ones({6, 4}, at::kInt), 0.1); });
  check_throws("temperature 0", [&] { sswp_fast::info_nce_forward_cpu(good, 0.0); });
  check_throws("negative temperature", [&] { sswp_fast::info_nce_forward_cpu(good, -0.5); });
  check_throws("backward: temperature 0", [&] { sswp_fast::info_nce_backward_cpu(one, good, lse, 0.0); });
  check_throws("backward: lse of the wrong length",
               [&] { sswp_fast::info_nce_backward_cpu(one, good, lse.narrow(0, 0, 4), 0.1); });
  check_throws("backward: odd number of rows",
               [&] { sswp_fast::info_nce_backward_cpu(one, good.narrow(0, 0, 5), lse.narrow(0, 0, 5), 0.1); });
  auto forward = find_op("sswp_fast::info_nce_forward").typed<Forward>();
  check_throws("dispatcher: odd number of rows", [&] { forward.call(at::randn({3, 4}), 0.1); });
  check_throws("dispatcher: temperature 0", [&] { forward.call(good, 0.0); });
}

void check_registrations() {
  for (const char* name : {"sswp_fast::info_nce_forward", "sswp_fast::info_nce_backward"}) {
    try {
      const c10::OperatorHandle op = find_op(name);
      check(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), std::string(name) + ": CPU kernel registered");
      const bool cuda_linked = SSWP_FAST_TEST_CUDA;
      check(op.hasKernelForDispatchKey(c10::DispatchKey::CUDA) == cuda_linked,
            std::string(name) + ": CUDA kernel registered iff sswp_fast_ops_cuda is linked (linked: " +
                (cuda_linked ? "yes" : "no") + ")");
    } catch (const c10::Error& e) {
      check(false, std::string(name) + ": schema not found: " + e.what_without_backtrace());
    }
  }
}

// runs body; an exception escaping it is one more failure
void guarded(const std::string& what, const std::function<void()>& body) {
  try {
    body();
  } catch (const c10::Error& e) {
    check(false, what + ": unexpected c10::Error: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    check(false, what + ": unexpected exception: " + e.what());
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  check_registrations();
  const Case cases[] = {
      {1, 5, 0.1, at::kDouble},    // N = 1: each row's only candidate is its partner
      {4, 1, 0.5, at::kDouble},    // D = 1
      {1, 1, 0.07, at::kFloat},    // both
      {300, 20, 0.1, at::kDouble}, // 2 column tiles of 256 + 44 per view
      {300, 20, 0.07, at::kFloat},
      {7, 16, 1.0, at::kFloat},
      {6, 8, 0.02, at::kFloat},     // 2 / tau above the fp32 exponent range: running-max / unfactored paths
      {5, 4, 0.002, at::kDouble},   // the same in fp64
  };
  for (const Case& c : cases) {
    guarded(describe(c), [&] { check_case(c); });
  }
  guarded("bad inputs", check_bad_inputs);
  std::cout << (g_checks - g_failures) << "/" << g_checks << " checks passed"
            << (SSWP_FAST_TEST_CUDA ? " (CUDA kernels linked)" : "") << "\n";
  return g_failures == 0 ? 0 : 1;
}
