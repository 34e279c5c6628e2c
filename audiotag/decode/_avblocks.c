/* Whole blocks of decoded audio from the slim FFmpeg, one call per block (audiotag/decode/ffmpeg.py).
 *
 * Built by scripts/build/build_avblocks.sh into _avblocks.so beside this file, against the libraries of
 * scripts/build/build_ffmpeg.sh, and called through ctypes: a ctypes call releases Python's lock for its whole
 * length, so a block of seconds is demuxed, decoded and converted to interleaved float32 without it. PyAV took
 * the lock for every frame (about 430 per 10 s of AAC).
 *
 * Input comes from a file descriptor (pread: no Python at all), a buffer in memory (no Python either), or a read
 * callback (a pipe; ctypes takes the lock for each 64 kB read). The first audio stream is decoded; the packets of
 * the others are discarded by the demuxer. A packet that fails to decode is skipped and counted; a demuxer error
 * ends the stream there and is kept, so the caller can say what was salvaged. Errors are FFmpeg's codes (AVERROR)
 * or the AVB_* codes below; the caller puts them in words.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>

#define AVB_NO_AUDIO 1    /* the container holds no audio stream */
#define AVB_NO_DECODER 2  /* this build has no decoder for the audio stream's codec */
#define AVB_TOO_MANY_BAD 3
#define IO_BUFFER 65536

/* Python's reader: size bytes at position of the input (a pipe ignores position: it is read in order). */
typedef int (*avb_read_fn)(uint8_t *buf, int size, int64_t position);

typedef struct {
    AVFormatContext *format;
    AVIOContext *io;
    AVCodecContext *decoder;
    AVPacket *packet;
    AVFrame *frame;
    int stream;            /* index of the decoded stream */
    int fd;                /* input: a descriptor (>= 0), */
    const uint8_t *memory; /* or a buffer, */
    avb_read_fn read;      /* or a callback */
    int64_t base;          /* where the input starts in fd: an archive's member is a window on the archive */
    int64_t position, size;
    int pending;           /* frame holds samples not yet handed out, from offset on */
    int offset;
    int demuxed, flushed, finished;
    int bad, max_bad, bad_error, stop_error;
} avb;

static int read_input(void *opaque, uint8_t *buf, int size) {
    avb *ctx = opaque;
    if (ctx->read) {
        if (ctx->size >= 0) {  /* a seekable reader: never past its end */
            int64_t left = ctx->size - ctx->position;
            if (left <= 0) return AVERROR_EOF;
            if (size > left) size = (int)left;
        }
        int got = ctx->read(buf, size, ctx->position);
        if (got > 0) ctx->position += got;
        return got == 0 ? AVERROR_EOF : got;
    }
    if (ctx->memory) {
        int64_t left = ctx->size - ctx->position;
        if (left <= 0) return AVERROR_EOF;
        if (size > left) size = (int)left;
        memcpy(buf, ctx->memory + ctx->position, size);
        ctx->position += size;
        return size;
    }
    int64_t left = ctx->size - ctx->position;  /* never past the window: the next member is not this input */
    if (left <= 0) return AVERROR_EOF;
    if (size > left) size = (int)left;
    ssize_t got;
    do got = pread(ctx->fd, buf, size, ctx->base + ctx->position); while (got < 0 && errno == EINTR);
    if (got < 0) return AVERROR(errno);
    if (got == 0) return AVERROR_EOF;
    ctx->position += got;
    return (int)got;
}

static int64_t seek_input(void *opaque, int64_t offset, int whence) {
    avb *ctx = opaque;
    if (whence & AVSEEK_SIZE) return ctx->size;
    whence &= ~AVSEEK_FORCE;
    int64_t target = whence == SEEK_SET ? offset : whence == SEEK_CUR ? ctx->position + offset :
                     whence == SEEK_END ? ctx->size + offset : -1;
    if (target < 0) return AVERROR(EINVAL);
    ctx->position = target;
    return target;
}

static void no_log(void *object, int level, const char *format, va_list args) {
    (void)object, (void)level, (void)format, (void)args;
}

/* A context reading size bytes of fd from offset on (size < 0: to the end of the file), size bytes of memory, or
 * through read (size < 0: a pipe; else a seekable reader of size bytes); then avb_open_input. */
avb *avb_new(int fd, int64_t offset, const uint8_t *memory, int64_t size, avb_read_fn read, int max_bad) {
    /* FFmpeg's log stays silent (audiotag reports a bad input once, itself), and its callback is set again for each
     * input: PyAV, once imported, installs one that takes Python's lock for every message, even unprinted ones,
     * and that alone made a block beside a busy thread 100x slower. */
    av_log_set_callback(no_log);
    avb *ctx = calloc(1, sizeof(avb));
    if (!ctx) return NULL;
    ctx->fd = fd;
    ctx->memory = memory;
    ctx->read = read;
    ctx->base = offset;
    ctx->size = size;
    ctx->max_bad = max_bad;
    ctx->stream = -1;
    if (fd >= 0 && size < 0) {
        struct stat info;
        ctx->size = fstat(fd, &info) == 0 ? info.st_size - offset : -1;
    }
    return ctx;
}

/* Probe the container (name: a file name, a hint for the probe, or NULL). */
int avb_open_input(avb *ctx, const char *name) {
    uint8_t *buffer = av_malloc(IO_BUFFER);
    if (!buffer) return AVERROR(ENOMEM);
    int pipe = ctx->read && ctx->size < 0;
    ctx->io = avio_alloc_context(buffer, IO_BUFFER, 0, ctx, read_input, NULL, pipe ? NULL : seek_input);
    if (!ctx->io) {
        av_free(buffer);
        return AVERROR(ENOMEM);
    }
    ctx->io->seekable = pipe ? 0 : AVIO_SEEKABLE_NORMAL;
    ctx->format = avformat_alloc_context();
    if (!ctx->format) return AVERROR(ENOMEM);
    ctx->format->pb = ctx->io;
    ctx->format->flags |= AVFMT_FLAG_CUSTOM_IO;
    int error = avformat_open_input(&ctx->format, name ? name : "", NULL, NULL);
    if (error < 0) return error;  /* the format context is freed on failure */
    return avformat_find_stream_info(ctx->format, NULL);
}

const char *avb_format_name(avb *ctx) {
    return ctx->format && ctx->format->iformat ? ctx->format->iformat->name : "";
}

/* The kinds of the container's streams, as a mask of 1 << AVMEDIA_TYPE_*. */
int avb_stream_kinds(avb *ctx) {
    int kinds = 0;
    for (unsigned i = 0; i < ctx->format->nb_streams; i++) {
        int kind = ctx->format->streams[i]->codecpar->codec_type;
        if (kind >= 0 && kind < 16) kinds |= 1 << kind;
    }
    return kinds;
}

/* Open the decoder of the first audio stream (the muxer's default comes first); the other streams' packets are
 * dropped by the demuxer. libopus is asked for float output when it is the decoder (as libsndfile's Opus). */
int avb_open_decoder(avb *ctx) {
    for (unsigned i = 0; i < ctx->format->nb_streams; i++) {
        AVStream *stream = ctx->format->streams[i];
        if (stream->codecpar->codec_type == AVMEDIA_TYPE_AUDIO && ctx->stream < 0)
            ctx->stream = (int)i;
        else
            stream->discard = AVDISCARD_ALL;
    }
    if (ctx->stream < 0) return AVB_NO_AUDIO;
    AVStream *stream = ctx->format->streams[ctx->stream];
    const AVCodec *codec = avcodec_find_decoder(stream->codecpar->codec_id);
    /* Opus in Ogg: libopus, as libsndfile decodes Ogg Opus (upstream's samples: the parity rule); elsewhere
     * (WebM, Matroska) FFmpeg's own decoder is the reference, and 2.4x faster. */
    if (stream->codecpar->codec_id == AV_CODEC_ID_OPUS && !strcmp(ctx->format->iformat->name, "ogg")) {
        const AVCodec *libopus = avcodec_find_decoder_by_name("libopus");
        if (libopus) codec = libopus;
    }
    if (!codec) return AVB_NO_DECODER;
    ctx->decoder = avcodec_alloc_context3(codec);
    ctx->packet = av_packet_alloc();
    ctx->frame = av_frame_alloc();
    if (!ctx->decoder || !ctx->packet || !ctx->frame) return AVERROR(ENOMEM);
    int error = avcodec_parameters_to_context(ctx->decoder, stream->codecpar);
    if (error < 0) return error;
    ctx->decoder->pkt_timebase = stream->time_base;
    ctx->decoder->thread_count = 1;  /* threads come from audiotag's --jobs */
    AVDictionary *options = NULL;
    if (!strcmp(codec->name, "libopus")) av_dict_set(&options, "request_sample_fmt", "flt", 0);
    error = avcodec_open2(ctx->decoder, codec, &options);
    av_dict_free(&options);
    return error;
}

const char *avb_codec_name(avb *ctx) {
    return ctx->decoder && ctx->decoder->codec ? ctx->decoder->codec->name : "";
}

/* The audio stream's length in seconds, as the container announces it; 0 when it does not. */
double avb_duration(avb *ctx) {
    AVStream *stream = ctx->format->streams[ctx->stream];
    if (stream->duration != AV_NOPTS_VALUE && stream->duration > 0 && stream->time_base.den)
        return stream->duration * av_q2d(stream->time_base);
    if (ctx->format->duration != AV_NOPTS_VALUE && ctx->format->duration > 0)
        return ctx->format->duration / (double)AV_TIME_BASE;
    return 0;
}

/* Packets skipped, the last one's error, the demuxer's error that ended the stream (0: none). */
void avb_state(avb *ctx, int *state) {
    state[0] = ctx->bad;
    state[1] = ctx->bad_error;
    state[2] = ctx->stop_error;
}

static int counted_bad(avb *ctx, int error) {
    ctx->bad++;
    ctx->bad_error = error;
    return ctx->bad > ctx->max_bad ? AVB_TOO_MANY_BAD : 0;
}

/* Make ctx->frame a frame with samples: 1, 0 at the end, or AVB_TOO_MANY_BAD. */
static int next_frame(avb *ctx) {
    if (ctx->pending) return 1;
    while (!ctx->finished) {
        int error = avcodec_receive_frame(ctx->decoder, ctx->frame);
        if (error == 0) {
            if (ctx->frame->nb_samples > 0 && ctx->frame->ch_layout.nb_channels > 0) {
                ctx->pending = 1;
                ctx->offset = 0;
                return 1;
            }
            if (ctx->frame->nb_samples > 0 && counted_bad(ctx, AVERROR_INVALIDDATA)) return AVB_TOO_MANY_BAD;
            av_frame_unref(ctx->frame);
            continue;
        }
        if (error == AVERROR_EOF) {
            ctx->finished = 1;
            break;
        }
        if (error != AVERROR(EAGAIN)) {  /* a packet that failed to decode: skipped */
            if (counted_bad(ctx, error)) return AVB_TOO_MANY_BAD;
            continue;
        }
        if (ctx->demuxed) {
            if (ctx->flushed) {
                ctx->finished = 1;
                break;
            }
            ctx->flushed = 1;
            avcodec_send_packet(ctx->decoder, NULL);
            continue;
        }
        error = av_read_frame(ctx->format, ctx->packet);
        if (error < 0) {
            if (error != AVERROR_EOF) ctx->stop_error = error;
            ctx->demuxed = 1;
            continue;
        }
        if (ctx->packet->stream_index == ctx->stream) {
            error = avcodec_send_packet(ctx->decoder, ctx->packet);
            if (error < 0 && error != AVERROR(EAGAIN) && counted_bad(ctx, error)) {
                av_packet_unref(ctx->packet);
                return AVB_TOO_MANY_BAD;
            }
        }
        av_packet_unref(ctx->packet);
    }
    return 0;
}

/* The first frame's rate and channel count (the stream's): 1, 0 when there is none, or AVB_TOO_MANY_BAD. */
int avb_peek(avb *ctx, int *rate, int *channels) {
    int got = next_frame(ctx);
    if (got == 1) {
        *rate = ctx->frame->sample_rate;
        *channels = ctx->frame->ch_layout.nb_channels;
    }
    return got;
}

/* All of opening in one call (a thread returning from each call into C may wait 5 ms for Python's lock beside a busy
 * thread): probe, decoder, first frame. info: the stream kinds' mask, then avb_peek's answer, rate and channels,
 * then avb_state. The names stay valid until avb_close. 0, or the error of the step that failed. */
int avb_open(avb *ctx, const char *name, int *info, double *duration, const char **format_name,
             const char **codec_name) {
    *format_name = *codec_name = "";
    int error = avb_open_input(ctx, name);
    if (error) return error;
    *format_name = avb_format_name(ctx);
    info[0] = avb_stream_kinds(ctx);
    error = avb_open_decoder(ctx);
    if (error) return error;
    *codec_name = avb_codec_name(ctx);
    *duration = avb_duration(ctx);
    info[1] = avb_peek(ctx, &info[2], &info[3]);
    avb_state(ctx, info + 4);
    return 0;
}

/* Samples as libsndfile scales them: int16 / 32768, ... (in float32, as numpy did it before). */
static float sample(const AVFrame *frame, enum AVSampleFormat format, int channel, int index) {
    int planar = av_sample_fmt_is_planar(format);
    int channels = frame->ch_layout.nb_channels;
    const uint8_t *data = frame->extended_data[planar ? channel : 0];
    int at = planar ? index : index * channels + channel;
    switch (av_get_packed_sample_fmt(format)) {
    case AV_SAMPLE_FMT_U8: return ((float)data[at] - 128.0f) / 128.0f;
    case AV_SAMPLE_FMT_S16: return (float)((const int16_t *)data)[at] * 0x1p-15f;
    case AV_SAMPLE_FMT_S32: return (float)((const int32_t *)data)[at] * 0x1p-31f;
    case AV_SAMPLE_FMT_FLT: return ((const float *)data)[at];
    case AV_SAMPLE_FMT_DBL: return (float)((const double *)data)[at];
    case AV_SAMPLE_FMT_S64: return (float)((double)((const int64_t *)data)[at] * 0x1p-63);
    default: return 0.0f;
    }
}

static void copy_frames(const AVFrame *frame, int from, int count, float *out) {
    enum AVSampleFormat format = frame->format;
    int channels = frame->ch_layout.nb_channels;
    if (format == AV_SAMPLE_FMT_FLT) {
        memcpy(out, (const float *)frame->extended_data[0] + (size_t)from * channels,
               sizeof(float) * (size_t)count * channels);
        return;
    }
    if (format == AV_SAMPLE_FMT_FLTP) {
        for (int c = 0; c < channels; c++) {
            const float *plane = (const float *)frame->extended_data[c] + from;
            for (int i = 0; i < count; i++) out[(size_t)i * channels + c] = plane[i];
        }
        return;
    }
    for (int i = 0; i < count; i++)
        for (int c = 0; c < channels; c++) out[(size_t)i * channels + c] = sample(frame, format, c, from + i);
}

/* The next block: up to max_frames frames of one rate and channel count, at most room floats, interleaved float32
 * into out; its rate and channel count into *rate and *channels, avb_state into state. The count of frames (0 at
 * the end), or -AVB_TOO_MANY_BAD. One call per block: the caller's thread holds no Python lock meanwhile.
 *
 * With mono_rate > 0, a block of mono_rate Hz and mono_channels channels whose samples all lie within +-limit (no
 * NaN, no infinity) is also downmixed in place, out[0..frames) being the mean over its channels, and *mono set to
 * 1: the stream's own downmix and check (stream.py), done here so that they need no Python (each numpy call on the
 * block handed the lock over and waited to take it back). Any other block is left as it is, *mono 0. */
static int read_block(avb *ctx, float *out, int room, int max_frames, int *rate, int *channels);
static int downmix(float *out, int frames, int channels, float limit);

int avb_read(avb *ctx, float *out, int room, int max_frames, int *rate, int *channels, int *state, int mono_rate,
             int mono_channels, float limit, int *mono) {
    int filled = read_block(ctx, out, room, max_frames, rate, channels);
    avb_state(ctx, state);
    *mono = filled > 0 && *rate == mono_rate && *channels == mono_channels &&
            downmix(out, filled, *channels, limit);
    return filled;
}

/* The mean over channels as stream._downmix takes it (c0 + c1, + c2 ..., then / channels, all in float), in place;
 * 0 (and out untouched) when a sample lies beyond +-limit or is NaN: stream._repair has the original block then. */
static int downmix(float *out, int frames, int channels, float limit) {
    size_t samples = (size_t)frames * channels;
    for (size_t i = 0; i < samples; i++)
        if (!(out[i] >= -limit && out[i] <= limit)) return 0;
    if (channels == 1) return 1;
    for (int i = 0; i < frames; i++) {
        const float *frame = out + (size_t)i * channels;
        float sum = frame[0] + frame[1];
        for (int c = 2; c < channels; c++) sum += frame[c];
        out[i] = sum / (float)channels;
    }
    return 1;
}

static int read_block(avb *ctx, float *out, int room, int max_frames, int *rate, int *channels) {
    int filled = 0;
    while (1) {
        int got = next_frame(ctx);
        if (got != 1) {
            if (got == AVB_TOO_MANY_BAD && !filled) return -AVB_TOO_MANY_BAD;
            break;
        }
        AVFrame *frame = ctx->frame;
        if (!filled) {
            *rate = frame->sample_rate;
            *channels = frame->ch_layout.nb_channels;
            if (max_frames > room / *channels) max_frames = room / *channels;
            if (max_frames < 1) return -AVB_TOO_MANY_BAD;  /* cannot happen: room is at least 1024 frames */
        } else if (frame->sample_rate != *rate || frame->ch_layout.nb_channels != *channels) {
            break;
        }
        int count = frame->nb_samples - ctx->offset;
        if (count > max_frames - filled) count = max_frames - filled;
        copy_frames(frame, ctx->offset, count, out + (size_t)filled * *channels);
        filled += count;
        ctx->offset += count;
        if (ctx->offset >= frame->nb_samples) {
            ctx->pending = 0;
            av_frame_unref(frame);
        }
        if (filled >= max_frames) break;
    }
    return filled;
}

void avb_close(avb *ctx) {
    if (!ctx) return;
    av_frame_free(&ctx->frame);
    av_packet_free(&ctx->packet);
    avcodec_free_context(&ctx->decoder);
    if (ctx->format) avformat_close_input(&ctx->format);
    if (ctx->io) {
        av_freep(&ctx->io->buffer);
        avio_context_free(&ctx->io);
    }
    free(ctx);
}

void avb_strerror(int error, char *text, int size) {
    if (av_strerror(error, text, size) < 0) snprintf(text, size, "Error number %d occurred", error);
}

void avb_quiet(void) { av_log_set_level(AV_LOG_PANIC); }

/* Which interface this library has: avblocks.py refuses another (a library built from an older _avblocks.c). */
int avb_interface(void) { return 2; }
