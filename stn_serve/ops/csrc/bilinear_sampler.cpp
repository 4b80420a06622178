// The bilinear sampler of stn_serve.ops.grid_sample as one fused CPU kernel: the forward, and the
// backward with the input gradient and the grid gradient in one pass over the grid.
//
// The maths is the derivation in the docstring of stn_serve/ops/bilinear.py, step for step,
// with the same operations in the same order (so points land on the same side of a pixel centre
// as in torch and the tensor-op reference). What differs is the schedule:
// - One parallel loop over the batch. Threads claim images from a shared counter as they become
//   free, so a thread that loses its core to another process holds back only the images it has
//   claimed, and no two threads ever write the same input-gradient plane.
// - Within an image, points go in blocks of kBlock. One loop over a block computes each point's
//   pixel coordinates, neighbours, weights and slopes (the compiler vectorises it); then the
//   channels reuse them, kChannelTile channels per pass over the block, each pass gathering the
//   four neighbours of all the block's points (with the CPU's gather instructions where
//   `-mtune=native` finds them fast) and writing a run of output or summing the grid gradient.
// - A neighbour outside the input reads zero and receives nothing: its index is replaced by 0
//   and its value by an exact zero, so an infinite pixel elsewhere cannot leak into the result.
// - The input gradient of an image is zeroed by the thread that scatters into it, just before,
//   while it is in that core's cache.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>

namespace {

enum class Padding { Zeros, Border, Reflection };

// Points handled together. Each channel's pass over a block gathers from one input plane and
// writes one run of output; larger blocks make fewer passes over the planes.
constexpr int64_t kBlock = 1024;

// The least work (about one multiply-add per unit) worth a thread of its own: torch's kernels use
// the same figure (at::internal::GRAIN_SIZE, in a header this file need not pull in).
constexpr int64_t kGrainSize = 32768;

Padding parse_padding(c10::string_view name) {
  if (name == "zeros") return Padding::Zeros;
  if (name == "border") return Padding::Border;
  if (name == "reflection") return Padding::Reflection;
  TORCH_CHECK(false, "padding_mode must be one of zeros, border, reflection, got '",
              std::string(name), "'");
}

// One axis of the input (size pixels): a normalised grid coordinate in [-1, 1] to a pixel
// coordinate after the padding mode, and d pixel / d grid coordinate. Written without branches,
// so that the loop over a block's points vectorises.
template <typename scalar_t, Padding padding>
struct Axis {
  scalar_t scale;       // the unnormalisation's slope
  scalar_t shift;       // 0 with align_corners, else 0.5 (subtracting 0 changes nothing)
  scalar_t last;        // size - 1: border and reflection clip to [0, last]
  scalar_t low;         // reflection folds into [low, low + twice_span / 2]
  scalar_t twice_span;  // 1 where the span is empty (one pixel with align_corners) ...
  scalar_t nonempty;    // ... and then 0, so that every point folds to 0

  Axis(int64_t size, bool align_corners)
      : scale(align_corners ? static_cast<scalar_t>(size - 1) / 2
                            : static_cast<scalar_t>(size) / 2),
        shift(align_corners ? scalar_t(0) : scalar_t(0.5)),
        last(static_cast<scalar_t>(size - 1)),
        low(align_corners ? scalar_t(0) : scalar_t(-0.5)),
        twice_span(static_cast<scalar_t>(align_corners ? 2 * (size - 1) : 2 * size)),
        nonempty(twice_span > 0 ? scalar_t(1) : scalar_t(0)) {
    twice_span = twice_span > 0 ? twice_span : scalar_t(1);
  }

  inline scalar_t pixel(scalar_t grid, scalar_t& slope) const {
    scalar_t x = (grid + 1) * scale - shift;
    slope = scale;
    if constexpr (padding == Padding::Reflection) {
      const scalar_t shifted = x - low;
      const scalar_t distance = std::abs(shifted);
      const scalar_t extra = distance - std::trunc(distance / twice_span) * twice_span;
      const scalar_t reflected = twice_span - extra;
      const bool flipped = extra > reflected;
      const scalar_t folded = (flipped ? reflected : extra) + low;
      // Times 0 for an empty span: 0, or NaN for a NaN or infinite point.
      x = folded * nonempty;
      slope = ((flipped != (shifted < 0)) ? -scale : scale) * nonempty;
    }
    if constexpr (padding != Padding::Zeros) {
      // Points on the border itself count as clipped: no gradient, as in torch. A NaN point
      // stays NaN (every comparison with it is false).
      slope = ((x > 0) & (x < last)) ? slope : scalar_t(0);
      x = scalar_t(0) > x ? scalar_t(0) : x;
      x = x > last ? last : x;
    }
    return x;
  }
};

// Integers as wide as the values, so that the vectorised loops keep one lane width.
template <typename scalar_t>
using index_type = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;

// What the sampler derives from a block of points' grid coordinates: for each neighbour k
// (y0 x0, y0 x1, y1 x0, y1 x1) its flat index in a plane (0 where it lies outside), whether it
// lies inside (1 or 0) and its weight; the fractions x - x0 and y - y0; d pixel / d grid along x
// and y. One array per quantity, so that the loops over a block's points vectorise.
template <typename scalar_t>
struct Block {
  using index_t = index_type<scalar_t>;
  // Rows a cache line longer than the block, so that rows of 4 KiB do not all map to the same
  // L1 cache sets.
  static constexpr int64_t kRow = kBlock + 64 / sizeof(scalar_t);
  index_t index[4][kRow];
  index_t inside[4][kRow];
  scalar_t weight[4][kRow];
  scalar_t fraction_x[kRow], fraction_y[kRow];
  scalar_t slope_x[kRow], slope_y[kRow];
  // The backward's sums over channels of d out / d x and d out / d y times the output gradient.
  scalar_t along_x[kRow], along_y[kRow];
};

// Channels whose loops share one pass over a block: each point's neighbours are read once for
// all of them.
constexpr int kChannelTile = 4;

template <typename scalar_t, Padding padding>
struct Sampler {
  Axis<scalar_t, padding> axis_x, axis_y;
  int32_t width, height;
  int64_t plane_size;

  Sampler(int64_t height, int64_t width, bool align_corners)
      : axis_x(width, align_corners),
        axis_y(height, align_corners),
        width(static_cast<int32_t>(width)),
        height(static_cast<int32_t>(height)),
        plane_size(height * width) {}

  // Fill `block` for the `count` points whose (x, y) grid coordinates start at `grid`; the
  // fractions and slopes only for the backward.
  template <bool backward>
  void locate(const scalar_t* __restrict__ grid, int64_t count,
              Block<scalar_t>& __restrict__ block) const {
    // Local copies: the compiler cannot tell that the block's stores leave *this alone.
    const auto along_x = axis_x, along_y = axis_y;
    using index_t = index_type<scalar_t>;
    const index_t w = width, h = height;
    const scalar_t far_x = static_cast<scalar_t>(w), far_y = static_cast<scalar_t>(h);
    for (int64_t i = 0; i < count; ++i) {
      scalar_t slope_x, slope_y;
      const scalar_t x = along_x.pixel(grid[2 * i], slope_x);
      const scalar_t y = along_y.pixel(grid[2 * i + 1], slope_y);
      const scalar_t corner_x = std::floor(x), corner_y = std::floor(y);
      const scalar_t fx = x - corner_x, fy = y - corner_y;
      if constexpr (backward) {
        block.slope_x[i] = slope_x;
        block.slope_y[i] = slope_y;
        block.fraction_x[i] = fx;
        block.fraction_y[i] = fy;
      }
      block.weight[0][i] = (1 - fy) * (1 - fx);
      block.weight[1][i] = (1 - fy) * fx;
      block.weight[2][i] = fy * (1 - fx);
      block.weight[3][i] = fy * fx;
      // Clamping first keeps the integer conversion defined for far, infinite and NaN points
      // (NaN goes to -2); a corner clamped to -2 or to the size has both neighbours outside.
      scalar_t clamped_x = corner_x > scalar_t(-2) ? corner_x : scalar_t(-2);
      clamped_x = far_x < clamped_x ? far_x : clamped_x;
      scalar_t clamped_y = corner_y > scalar_t(-2) ? corner_y : scalar_t(-2);
      clamped_y = far_y < clamped_y ? far_y : clamped_y;
      // Through int32: AVX2 converts doubles to 32-bit integers only.
      const index_t x0 = static_cast<int32_t>(clamped_x);
      const index_t y0 = static_cast<int32_t>(clamped_y);
      const bool left = (x0 >= 0) & (x0 < w), right = (x0 >= -1) & (x0 < w - 1);
      const bool top = (y0 >= 0) & (y0 < h), bottom = (y0 >= -1) & (y0 < h - 1);
      const index_t top_left = y0 * w + x0;
      block.inside[0][i] = top & left;
      block.inside[1][i] = top & right;
      block.inside[2][i] = bottom & left;
      block.inside[3][i] = bottom & right;
      block.index[0][i] = (top & left) ? top_left : 0;
      block.index[1][i] = (top & right) ? top_left + 1 : 0;
      block.index[2][i] = (bottom & left) ? top_left + w : 0;
      block.index[3][i] = (bottom & right) ? top_left + w + 1 : 0;
    }
  }

  // The four neighbours' values of point i in `plane`, zero outside.
  static inline void read(const scalar_t* plane, const Block<scalar_t>& block, int64_t i,
                          scalar_t value[4]) {
    for (int k = 0; k < 4; ++k) {
      const scalar_t read = plane[block.index[k][i]];
      value[k] = block.inside[k][i] ? read : scalar_t(0);
    }
  }

  // Output planes (C x points) of one image.
  void forward(const scalar_t* input, const scalar_t* grid, scalar_t* output, int64_t channels,
               int64_t points, Block<scalar_t>& block) const {
    for (int64_t start = 0; start < points; start += kBlock) {
      const int64_t count = std::min(kBlock, points - start);
      locate<false>(grid + 2 * start, count, block);
      int64_t c = 0;
      for (; c + kChannelTile <= channels; c += kChannelTile) {
        sample<kChannelTile>(input + c * plane_size, output + c * points + start, points, count,
                             block);
      }
      for (; c < channels; ++c) {
        sample<1>(input + c * plane_size, output + c * points + start, points, count, block);
      }
    }
  }

  template <int tile>
  inline void sample(const scalar_t* input, scalar_t* __restrict__ output, int64_t points,
                     int64_t count, const Block<scalar_t>& block) const {
    const int64_t plane_size = this->plane_size;
    for (int64_t i = 0; i < count; ++i) {
      for (int t = 0; t < tile; ++t) {
        scalar_t value[4];
        read(input + t * plane_size, block, i, value);
        output[t * points + i] = value[0] * block.weight[0][i] + value[1] * block.weight[1][i] +
                                 value[2] * block.weight[2][i] + value[3] * block.weight[3][i];
      }
    }
  }

  // grad_grid (points x 2) and, if grad_input is not null, grad_input (C planes, zeroed here)
  // of one image.
  void backward(const scalar_t* grad_output, const scalar_t* input, const scalar_t* grid,
                scalar_t* grad_input, scalar_t* grad_grid, int64_t channels, int64_t points,
                Block<scalar_t>& block) const {
    if (grad_input != nullptr) {
      std::memset(grad_input, 0, sizeof(scalar_t) * channels * plane_size);
    }
    for (int64_t start = 0; start < points; start += kBlock) {
      const int64_t count = std::min(kBlock, points - start);
      const scalar_t* grad = grad_output + start;
      locate<true>(grid + 2 * start, count, block);
      std::fill(block.along_x, block.along_x + count, scalar_t(0));
      std::fill(block.along_y, block.along_y + count, scalar_t(0));
      int64_t c = 0;
      for (; c + kChannelTile <= channels; c += kChannelTile) {
        accumulate<kChannelTile>(input + c * plane_size, grad + c * points, points, count, block);
      }
      for (; c < channels; ++c) {
        accumulate<1>(input + c * plane_size, grad + c * points, points, count, block);
      }
      scalar_t* __restrict__ grad_point = grad_grid + 2 * start;
      for (int64_t i = 0; i < count; ++i) {
        grad_point[2 * i] = block.along_x[i] * block.slope_x[i];
        grad_point[2 * i + 1] = block.along_y[i] * block.slope_y[i];
      }
      if (grad_input != nullptr) {
        for (c = 0; c < channels; ++c) {
          scatter(grad + c * points, count, block, grad_input + c * plane_size);
        }
      }
    }
  }

  // Add d out / d x and d out / d y times the output gradient of a tile of channels to the
  // block's sums, channel after channel.
  template <int tile>
  inline void accumulate(const scalar_t* input, const scalar_t* grad, int64_t points,
                         int64_t count, Block<scalar_t>& __restrict__ block) const {
    const int64_t plane_size = this->plane_size;
    for (int64_t i = 0; i < count; ++i) {
      const scalar_t fx = block.fraction_x[i], fy = block.fraction_y[i];
      scalar_t sum_x = block.along_x[i], sum_y = block.along_y[i];
      for (int t = 0; t < tile; ++t) {
        scalar_t v[4];
        read(input + t * plane_size, block, i, v);
        const scalar_t g = grad[t * points + i];
        sum_x += ((v[1] - v[0]) * (1 - fy) + (v[3] - v[2]) * fy) * g;
        sum_y += ((v[2] - v[0]) * (1 - fx) + (v[3] - v[1]) * fx) * g;
      }
      block.along_x[i] = sum_x;
      block.along_y[i] = sum_y;
    }
  }

  // The scatter-add of each point's four weighted contributions into one input-gradient plane.
  // Points of a block share neighbours, so it stays a scalar loop.
  static inline void scatter(const scalar_t* grad, int64_t count, const Block<scalar_t>& block,
                             scalar_t* grad_plane) {
    for (int64_t i = 0; i < count; ++i) {
      for (int k = 0; k < 4; ++k) {
        if (block.inside[k][i]) grad_plane[block.index[k][i]] += block.weight[k][i] * grad[i];
      }
    }
  }
};

// Run `body(n, block)` for every image n in [0, batch), in one parallel region; threads claim
// groups of images as they become free.
template <typename scalar_t, typename Body>
void for_each_image(int64_t batch, int64_t work_per_image, const Body& body) {
  // Enough images per claim that the shared counter costs nothing beside them, and enough work
  // per thread that starting a thread pays off.
  const int64_t claim = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, work_per_image));
  const int64_t grain = std::max<int64_t>(
      1, kGrainSize / std::max<int64_t>(1, work_per_image));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, batch, grain, [&](int64_t, int64_t) {
    const auto block = std::make_unique<Block<scalar_t>>();
    for (int64_t first = next.fetch_add(claim); first < batch; first = next.fetch_add(claim)) {
      const int64_t last = std::min(batch, first + claim);
      for (int64_t n = first; n < last; ++n) body(n, *block);
    }
  });
}

// Calls body(std::integral_constant<Padding, padding>): the padding mode is a template argument,
// so that the per-point loop has no branches on it.
template <typename Body>
void dispatch(Padding padding, const Body& body) {
  switch (padding) {
    case Padding::Zeros:
      return body(std::integral_constant<Padding, Padding::Zeros>{});
    case Padding::Border:
      return body(std::integral_constant<Padding, Padding::Border>{});
    case Padding::Reflection:
      return body(std::integral_constant<Padding, Padding::Reflection>{});
  }
}

void check_arguments(const at::Tensor& input, const at::Tensor& grid) {
  TORCH_CHECK(input.dim() == 4 && grid.dim() == 4 && grid.size(3) == 2,
              "expected input [N, C, H, W] and grid [N, H, W, 2], got ", input.sizes(), " and ",
              grid.sizes());
  TORCH_CHECK(input.size(0) == grid.size(0), "grid batch must equal input batch");
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "input must have H, W >= 1");
  TORCH_CHECK(input.scalar_type() == grid.scalar_type(), "input and grid dtypes differ");
  TORCH_CHECK(input.size(2) * input.size(3) < (int64_t(1) << 31) - 1,
              "an input plane of ", input.size(2), " x ", input.size(3),
              " pixels is too large for 32-bit indices");
}

at::Tensor bilinear_sample(const at::Tensor& input_, const at::Tensor& grid_,
                           c10::string_view padding_mode, bool align_corners) {
  check_arguments(input_, grid_);
  const Padding padding = parse_padding(padding_mode);
  const at::Tensor input = input_.contiguous(), grid = grid_.contiguous();
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t points = grid.size(1) * grid.size(2);
  at::Tensor output = at::empty({batch, channels, grid.size(1), grid.size(2)}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "bilinear_sample", [&] {
    const scalar_t* input_data = input.const_data_ptr<scalar_t>();
    const scalar_t* grid_data = grid.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    dispatch(padding, [&](auto pad) {
      const Sampler<scalar_t, decltype(pad)::value> sampler(height, width, align_corners);
      for_each_image<scalar_t>(batch, points * (channels + 2), [&](int64_t n, auto& block) {
        sampler.forward(input_data + n * channels * height * width, grid_data + n * points * 2,
                        output_data + n * channels * points, channels, points, block);
      });
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> bilinear_sample_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& grid_,
    c10::string_view padding_mode, bool align_corners, bool need_input_grad) {
  check_arguments(input_, grid_);
  const Padding padding = parse_padding(padding_mode);
  const at::Tensor input = input_.contiguous(), grid = grid_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t points = grid.size(1) * grid.size(2);
  TORCH_CHECK(grad_output.sizes() ==
                  at::IntArrayRef({batch, channels, grid.size(1), grid.size(2)}),
              "grad_output must be [N, C, H_out, W_out], got ", grad_output.sizes());
  at::Tensor grad_grid = at::empty(grid.sizes(), grid.options());
  at::Tensor grad_input = need_input_grad ? at::empty(input.sizes(), input.options())
                                          : at::empty({0}, input.options());
  if (grad_input.numel() > 0 && points == 0) grad_input.zero_();
  if (batch == 0 || points == 0) return {grad_input, grad_grid};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "bilinear_sample_backward", [&] {
    const scalar_t* grad_output_data = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* input_data = input.const_data_ptr<scalar_t>();
    const scalar_t* grid_data = grid.const_data_ptr<scalar_t>();
    scalar_t* grad_input_data = need_input_grad ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_grid_data = grad_grid.mutable_data_ptr<scalar_t>();
    const int64_t plane_size = height * width;
    dispatch(padding, [&](auto pad) {
      const Sampler<scalar_t, decltype(pad)::value> sampler(height, width, align_corners);
      for_each_image<scalar_t>(
          batch, points * (2 * channels + 2) + (need_input_grad ? channels * plane_size : 0),
          [&](int64_t n, auto& block) {
            sampler.backward(
                grad_output_data + n * channels * points, input_data + n * channels * plane_size,
                grid_data + n * points * 2,
                need_input_grad ? grad_input_data + n * channels * plane_size : nullptr,
                grad_grid_data + n * points * 2, channels, points, block);
          });
    });
  });
  return {grad_input, grad_grid};
}

}  // namespace

TORCH_LIBRARY(stn_kernel, m) {
  m.def("bilinear_sample(Tensor input, Tensor grid, str padding_mode, bool align_corners) "
        "-> Tensor");
  m.def("bilinear_sample_backward(Tensor grad_output, Tensor input, Tensor grid, "
        "str padding_mode, bool align_corners, bool need_input_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stn_kernel, CPU, m) {
  m.impl("bilinear_sample", &bilinear_sample);
  m.impl("bilinear_sample_backward", &bilinear_sample_backward);
}
