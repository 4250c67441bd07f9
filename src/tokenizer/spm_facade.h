/* C interface of the SentencePiece facade library (libmagma_spm_facade.so).
 *
 * Debian's libsentencepiece carries its own protobuf 3.14 and aborts in a
 * process that also loads the system protobuf (gRPC, libtorch, OpenCV); its
 * header also clashes with abseil. The facade is the only code that includes
 * sentencepiece_processor.h; the server opens it with
 * dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) so that it binds to the
 * protobuf it was built with. */
#ifndef MAGMA_SRC_TOKENIZER_SPM_FACADE_H_
#define MAGMA_SRC_TOKENIZER_SPM_FACADE_H_

#ifdef __cplusplus
extern "C" {
#endif

/* Loads a .model file; NULL on failure with a message in err. */
void* magma_spm_load(const char* path, char* err, int err_len);
void magma_spm_free(void* handle);
/* Encodes len bytes of UTF-8 text into ids (at most cap are written).
 * Returns the number of ids, or -1 on error. */
int magma_spm_encode(void* handle, const char* text, int len, int* ids, int cap);
int magma_spm_vocab_size(void* handle);
/* Writes the piece of id (not NUL-terminated, at most cap bytes); returns its length. */
int magma_spm_piece(void* handle, int id, char* out, int cap);
int magma_spm_piece_to_id(void* handle, const char* piece, int len);
/* Bit 0: control, bit 1: unknown, bit 2: byte, bit 3: unused. */
int magma_spm_flags(void* handle, int id);
/* which: 0 bos, 1 eos, 2 pad, 3 unk. -1 when absent. */
int magma_spm_special(void* handle, int which);
/* 1 when the model's normaliser adds a dummy prefix space. */
int magma_spm_add_dummy_prefix(void* handle);

#ifdef __cplusplus
}
#endif

#endif /* MAGMA_SRC_TOKENIZER_SPM_FACADE_H_ */
