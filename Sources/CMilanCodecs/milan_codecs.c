#include "milan_codecs.h"

#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// JPEG

typedef struct {
  struct jpeg_error_mgr base;
  jmp_buf jump;
  char *message;
} jpeg_error_state;

static void jpeg_error_exit(j_common_ptr cinfo) {
  jpeg_error_state *e = (jpeg_error_state *)cinfo->err;
  char buffer[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buffer);
  snprintf(e->message, 256, "JPEG: %s", buffer);
  longjmp(e->jump, 1);
}

// A truncated file ("Premature end of JPEG file") is an error for us, as in Pillow: libjpeg would otherwise fill the
// missing rows with grey and report success, and a half-grey training image is data loss we must count. Other
// warnings (extraneous bytes before a marker, ...) are benign and common in real photos; they are ignored.
static void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_error_exit(cinfo);
}

static int decode_jpeg(const unsigned char *data, size_t size, milan_image *out) {
  struct jpeg_decompress_struct cinfo;
  jpeg_error_state err;
  unsigned char *volatile pixels = NULL;
  unsigned char *volatile row = NULL;
  memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = jpeg_std_error(&err.base);
  err.base.error_exit = jpeg_error_exit;
  err.base.emit_message = jpeg_emit_message;
  err.message = out->error;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(pixels);
    free(row);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)size);
  jpeg_read_header(&cinfo, TRUE);
  if ((size_t)cinfo.image_width * (size_t)cinfo.image_height > MILAN_MAX_IMAGE_PIXELS) {
    snprintf(out->error, 256, "JPEG: %ux%u = %zu pixels is over the limit of %zu (Pillow's decompression-bomb limit)",
             cinfo.image_width, cinfo.image_height, (size_t)cinfo.image_width * cinfo.image_height,
             (size_t)MILAN_MAX_IMAGE_PIXELS);
    jpeg_destroy_decompress(&cinfo);
    return 3;
  }
  int cmyk = 0;
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_CMYK:
    case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; cmyk = 1; break;
    default: cinfo.out_color_space = JCS_RGB; break;
  }
  jpeg_start_decompress(&cinfo);
  int w = (int)cinfo.output_width, h = (int)cinfo.output_height, inc = cinfo.output_components;
  int channels = cinfo.out_color_space == JCS_GRAYSCALE ? 1 : 3;
  if (w <= 0 || h <= 0 || (size_t)w * (size_t)h > (size_t)1 << 28) {
    snprintf(out->error, 256, "JPEG: unsupported dimensions %dx%d", w, h);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  pixels = malloc((size_t)w * h * channels);
  row = malloc((size_t)w * inc);
  if (!pixels || !row) {
    snprintf(out->error, 256, "JPEG: out of memory for %dx%d", w, h);
    jpeg_destroy_decompress(&cinfo);
    free(pixels);
    free(row);
    return 1;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    unsigned char *dst = pixels + (size_t)cinfo.output_scanline * w * channels;
    JSAMPROW rows[1] = {cmyk ? row : dst};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (cmyk) {
      // Pillow reads CMYK JPEGs as inverted ("CMYK;I", as Adobe writes them), then converts CMYK → RGB with
      // R = (255 − K) − MULDIV255(C, 255 − K) on the un-inverted values.
      for (int x = 0; x < w; x++) {
        int nk = row[4 * x + 3];  // 255 − K with K = 255 − raw
        for (int k = 0; k < 3; k++) {
          int c = 255 - row[4 * x + k];
          int t = c * nk + 128;
          dst[3 * x + k] = (unsigned char)(nk - ((t + (t >> 8)) >> 8));
        }
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  free(row);
  out->width = w;
  out->height = h;
  out->channels = channels;
  out->pixels = pixels;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// PNG

typedef struct {
  const unsigned char *data;
  size_t size, offset;
} png_memory;

static void png_read_memory(png_structp png, png_bytep dst, png_size_t n) {
  png_memory *m = (png_memory *)png_get_io_ptr(png);
  if (m->offset + n > m->size) png_error(png, "truncated file");
  memcpy(dst, m->data + m->offset, n);
  m->offset += n;
}

static void png_error_fn(png_structp png, png_const_charp msg) {
  char *buffer = (char *)png_get_error_ptr(png);
  snprintf(buffer, 256, "PNG: %s", msg);
  png_longjmp(png, 1);
}

static void png_warning_fn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static int decode_png(const unsigned char *data, size_t size, milan_image *out) {
  // The size from IHDR (always the first chunk, at a fixed offset), before libpng reads further chunks or allocates:
  // a decompression bomb is refused from its first 24 bytes.
  if (size >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
    size_t w = (size_t)data[16] << 24 | (size_t)data[17] << 16 | (size_t)data[18] << 8 | data[19];
    size_t h = (size_t)data[20] << 24 | (size_t)data[21] << 16 | (size_t)data[22] << 8 | data[23];
    if (w * h > MILAN_MAX_IMAGE_PIXELS) {
      snprintf(out->error, 256, "PNG: %zux%zu = %zu pixels is over the limit of %zu (Pillow's decompression-bomb limit)",
               w, h, w * h, (size_t)MILAN_MAX_IMAGE_PIXELS);
      return 3;
    }
  }
  png_memory mem = {data, size, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, out->error, png_error_fn, png_warning_fn);
  if (!png) {
    snprintf(out->error, 256, "PNG: cannot create the reader");
    return 1;
  }
  png_infop info = png_create_info_struct(png);
  unsigned char *volatile pixels = NULL;
  png_bytep *volatile rows = NULL;
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    free(pixels);
    free(rows);
    if (!out->error[0]) snprintf(out->error, 256, "PNG: cannot create the reader");
    return 1;
  }
  png_set_read_fn(png, &mem, png_read_memory);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (w == 0 || h == 0 || (size_t)w * h > MILAN_MAX_IMAGE_PIXELS) png_error(png, "unsupported dimensions");
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  int channels = png_get_channels(png, info);
  if (channels != 1 && channels != 3) png_error(png, "unexpected channel count after conversion");
  size_t stride = (size_t)w * channels;
  if (png_get_rowbytes(png, info) != stride) png_error(png, "unexpected row size after conversion");
  pixels = malloc(stride * h);
  rows = malloc(sizeof(png_bytep) * h);
  if (!pixels || !rows) png_error(png, "out of memory");
  for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + y * stride;
  png_read_image(png, rows);
  png_read_end(png, NULL);
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  out->width = (int)w;
  out->height = (int)h;
  out->channels = channels;
  out->pixels = pixels;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------

int milan_decode_image(const unsigned char *data, size_t size, milan_image *out) {
  memset(out, 0, sizeof *out);
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, size, out);
  if (size >= 8 && png_sig_cmp((png_const_bytep)data, 0, 8) == 0) return decode_png(data, size, out);
  snprintf(out->error, 256, size == 0 ? "empty file" : "not a JPEG or PNG file (unrecognised signature)");
  return 2;
}

void milan_image_free(milan_image *img) {
  free(img->pixels);
  img->pixels = NULL;
}

int milan_jpeg_lib_version(void) {
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
  return LIBJPEG_TURBO_VERSION_NUMBER;
#else
  return JPEG_LIB_VERSION;
#endif
}

const char *milan_png_lib_version(void) { return png_get_libpng_ver(NULL); }

// ---- PNG encoding to memory

typedef struct {
  unsigned char *data;
  size_t size, capacity;
  int failed;
} png_sink;

static void png_write_memory(png_structp png, png_bytep src, png_size_t n) {
  png_sink *s = (png_sink *)png_get_io_ptr(png);
  if (s->size + n > s->capacity) {
    size_t cap = s->capacity ? s->capacity * 2 : 65536;
    while (cap < s->size + n) cap *= 2;
    unsigned char *grown = realloc(s->data, cap);
    if (!grown) {
      s->failed = 1;
      png_error(png, "out of memory");
    }
    s->data = grown;
    s->capacity = cap;
  }
  memcpy(s->data + s->size, src, n);
  s->size += n;
}

static void png_flush_memory(png_structp png) { (void)png; }

int milan_encode_png_rgb(const unsigned char *rgb, int width, int height, unsigned char **out, size_t *out_size,
                         char error[256]) {
  *out = NULL;
  *out_size = 0;
  error[0] = 0;
  if (width <= 0 || height <= 0) {
    snprintf(error, 256, "invalid size %dx%d", width, height);
    return 1;
  }
  png_sink sink = {NULL, 0, 0, 0};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, error, png_error_fn, png_warning_fn);
  if (!png) {
    snprintf(error, 256, "png_create_write_struct failed");
    return 1;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, info ? &info : NULL);
    free(sink.data);
    if (!error[0]) snprintf(error, 256, "png encoding failed");
    return 1;
  }
  png_set_write_fn(png, &sink, png_write_memory, png_flush_memory);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  *out = sink.data;
  *out_size = sink.size;
  return 0;
}

void milan_buffer_free(unsigned char *buffer) { free(buffer); }
