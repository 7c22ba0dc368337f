// Image decoding with the system's libjpeg-turbo and libpng. Kept in C because both libraries report errors by
// longjmp, which Swift cannot catch. Output: 8-bit, 1 channel (grey) or 3 channels (RGB), rows top to bottom.
#ifndef MILAN_CODECS_H
#define MILAN_CODECS_H
#include <stddef.h>

typedef struct {
  int width, height, channels;   // channels: 1 or 3
  unsigned char *pixels;         // width * height * channels bytes, malloc'd; NULL on failure
  char error[256];               // the decoder's message when the call fails
} milan_image;

// Images over this many pixels are refused before any pixel buffer is allocated: Pillow's decompression-bomb
// error threshold (2 × Image.MAX_IMAGE_PIXELS = 2 × 89,478,485).
#define MILAN_MAX_IMAGE_PIXELS 178956970u

// Returns 0 on success. Detects JPEG / PNG from the first bytes (returns 2 for an unknown format, 3 for an image
// over MILAN_MAX_IMAGE_PIXELS, 1 for anything else that fails).
// Conversions follow Pillow's `Image.convert("RGB")` / mode "L": alpha is dropped (not composited), palettes are
// expanded, JPEG YCbCr goes through libjpeg's own colour conversion, CMYK/YCCK JPEGs are converted as Pillow does
// (read as inverted CMYK, R = (255 - K) - MULDIV255(C, 255 - K)), 16-bit RGB keeps the high byte (as Pillow).
// One deliberate difference: 16-bit grey PNGs also keep their high byte, where Pillow's I;16 -> L conversion clamps
// every value above 255 to white (which destroys real 16-bit images).
int milan_decode_image(const unsigned char *data, size_t size, milan_image *out);
void milan_image_free(milan_image *img);

// Encodes 8-bit RGB (rows top to bottom, 3 bytes a pixel) as a PNG in memory (libpng, default compression).
// Returns 0 and a malloc'd buffer in *out / *out_size (free with milan_buffer_free); otherwise fills `error`.
int milan_encode_png_rgb(const unsigned char *rgb, int width, int height, unsigned char **out, size_t *out_size,
                         char error[256]);
void milan_buffer_free(unsigned char *buffer);

// Library versions, for `milan info` and test reports.
int milan_jpeg_lib_version(void);
const char *milan_png_lib_version(void);

#endif
