/* The log-mel frontend of audiotag/infer/frontend.py in one call, called through ctypes.CDLL, which lets go of
 * Python's lock for the call's length: the numpy version hands the lock over 40-60 times per 10 s window (one
 * numpy call each), and with many threads on few cores each hand-off queues behind the others.
 *
 * The arithmetic is upstream's (../shared/reference/FRONTEND.md), in float32 as torch computes it:
 * pre-emphasis y[n] = x[n+1] - 0.97 x[n]; reflect padding by n_fft / 2; frames of 800 samples every 320, times
 * the window, zero-padded to 1024 (the power does not depend on where in the 1024 the 800 sit); the power of a
 * real FFT (FFmpeg's av_tx, already linked for decoding); the mel filterbank; ln(mel + 1e-5); (x + 4.5) / 5.
 * Build: scripts/build/build_avblocks.sh. Compiled with -ffp-contract=off, so no fused multiply-add rounds
 * differently from numpy's.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libavutil/mem.h>
#include <libavutil/tx.h>

#define FRAME_BLOCK 16 /* frames whose power spectra are multiplied by the filterbank together: one SIMD lane each */

enum { LOGMEL_OK = 0, LOGMEL_NO_MEMORY = -1, LOGMEL_NO_FFT = -2, LOGMEL_TOO_SHORT = -3 };

/* samples: n float32 at 32 kHz, n > n_fft / 2 + 1. window: win_length values. weights: n_mels rows of n_bins,
 * row m non-zero only in [lows[m], highs[m]), columns for FFT bins first .. first + n_bins. out: n_mels rows of
 * n_frames, n_frames = 1 + (n - 1) / hop. */
int audiotag_log_mel(const float *samples, int64_t n, int n_fft, int hop, const float *window, int win_length,
                     const float *weights, const int32_t *lows, const int32_t *highs, int n_mels, int first,
                     int n_bins, float preemphasis, float log_offset, float norm_shift, float norm_scale,
                     float *out)
{
    int64_t half = n_fft / 2, emphasised = n - 1, n_frames = 1 + (n - 1) / hop;
    int64_t padded_length = emphasised + 2 * half, offset = (n_fft - win_length) / 2;
    int64_t stride = (half + 1 + 7) / 8 * 8;  /* spectra start on 64-byte lines: av_tx wants aligned output */
    if (n < half + 2)  /* reflect padding needs more than half samples after pre-emphasis */
        return LOGMEL_TOO_SHORT;
    /* malloc, not av_malloc, for the clip-sized buffer: av_malloc refuses 2 GB (a window of 4.7 h) */
    float *padded = malloc(padded_length * sizeof(float));
    float *frame = av_malloc(n_fft * sizeof(float));  /* the transform's input and output: aligned for av_tx */
    AVComplexFloat *spectrum = av_mallocz(FRAME_BLOCK * stride * sizeof(AVComplexFloat));
    float *power = calloc((size_t)n_bins * FRAME_BLOCK, sizeof(float));  /* power[bin][frame in block] */
    AVTXContext *fft = NULL;
    av_tx_fn transform = NULL;
    float unscaled = 1.0f;
    int status = LOGMEL_OK;

    if (!padded || !frame || !spectrum || !power) {
        status = LOGMEL_NO_MEMORY;
        goto done;
    }
    if (av_tx_init(&fft, &transform, AV_TX_FLOAT_RDFT, 0, n_fft, &unscaled, 0) < 0) {
        status = LOGMEL_NO_FFT;
        goto done;
    }
    float *middle = padded + half;
    for (int64_t i = 0; i < emphasised; i++)
        middle[i] = samples[i + 1] + samples[i] * -preemphasis;  /* x + (-a) y, as numpy and torch round it */
    for (int64_t i = 1; i <= half; i++) {  /* mirrored about the edge samples, which are not repeated */
        middle[-i] = middle[i];
        middle[emphasised - 1 + i] = middle[emphasised - 1 - i];
    }
    for (int64_t base = 0; base < n_frames; base += FRAME_BLOCK) {
        int count = n_frames - base < FRAME_BLOCK ? (int)(n_frames - base) : FRAME_BLOCK;
        for (int j = 0; j < count; j++) {
            const float *start = padded + (base + j) * hop + offset;
            for (int i = 0; i < win_length; i++)
                frame[i] = start[i] * window[i];
            memset(frame + win_length, 0, (n_fft - win_length) * sizeof(float));  /* the transform may use it */
            transform(fft, spectrum + j * stride, frame, sizeof(float));
        }
        for (int k = 0; k < n_bins; k++)
            for (int j = 0; j < FRAME_BLOCK; j++) {  /* past count: a block before's frames, never written out */
                AVComplexFloat x = spectrum[j * stride + first + k];
                power[k * FRAME_BLOCK + j] = x.re * x.re + x.im * x.im;
            }
        for (int m = 0; m < n_mels; m++) {
            float mel[FRAME_BLOCK] = {0};
            const float *row = weights + (int64_t)m * n_bins;
            for (int k = lows[m]; k < highs[m]; k++)
                for (int j = 0; j < FRAME_BLOCK; j++)
                    mel[j] += row[k] * power[k * FRAME_BLOCK + j];
            for (int j = 0; j < FRAME_BLOCK; j++)
                mel[j] = logf(mel[j] + log_offset);
            float *dest = out + m * n_frames + base;
            for (int j = 0; j < count; j++)
                dest[j] = (mel[j] + norm_shift) / norm_scale;
        }
    }
done:
    av_tx_uninit(&fft);
    free(padded);
    av_free(frame);
    av_free(spectrum);
    free(power);
    return status;
}

/* The version of audiotag_log_mel's arguments: frontend.py checks it, so a library built from an older file is
 * not called with the wrong ones. */
int audiotag_log_mel_interface(void) { return 1; }
