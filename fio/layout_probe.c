// SPDX-License-Identifier: GPL-2.0
/*
 * Prints the sizes and offsets, under the fetched fio headers, of the fio
 * structures homi_engine.c touches, one "KIND NAME VALUE [FUNCTION]" line each:
 *   disp: a field offset the installed fio binary must use as a displacement
 *   imm:  a structure size it must use as an immediate (allocation, indexing)
 *   FUNCTION: an exported fio function whose source (3.33, named beside each
 *         line) reads or writes that field: the value must appear in that
 *         function's machine code, not merely somewhere in the binary
 *   info: printed for the record, not checked (offsets too small to be told
 *         apart from other constants in machine code; see homi_engine.c for why
 *         they cannot move)
 * `cargo xtask fio` compiles it with the engine's flags and looks for each checked
 * value in the disassembly of the fio that will load the engine.
 */
#include <stddef.h>
#include <stdio.h>

#include "fio.h"

#define P(kind, type, field) printf(kind " " #type "." #field " %zu\n", offsetof(struct type, field))
#define S(kind, type) printf(kind " sizeof(" #type ") %zu\n", sizeof(struct type))
#define PF(kind, type, field, fn) \
	printf(kind " " #type "." #field " %zu " #fn "\n", offsetof(struct type, field))
#define SF(kind, type, fn) printf(kind " sizeof(" #type ") %zu " #fn "\n", sizeof(struct type))

int main(void)
{
	SF("imm", thread_data, fio_terminate_threads); /* libfio.c: for_each_td */
	S("imm", thread_options);
	PF("disp", thread_data, eo, free_ioengine); /* ioengines.c: free(td->eo) */
	PF("disp", thread_data, io_ops, td_io_init); /* td->io_ops->init(td) */
	PF("disp", thread_data, io_ops_data, close_ioengine); /* td->io_ops_data = NULL */
	PF("disp", thread_data, files, close_files); /* filesetup.c: for_each_file */
	PF("disp", thread_data, files_index, close_files);
	PF("disp", thread_data, orig_buffer, free_io_mem); /* memory.c */
	PF("disp", thread_data, orig_buffer_size, free_io_mem);
	PF("disp", thread_data, error, td_io_commit); /* td_verror(td, -ret, "io commit") */
	PF("disp", thread_data, first_error, td_io_commit);
	PF("disp", thread_data, verror, td_io_commit);
	PF("disp", thread_data, parent, td_io_commit);
	PF("disp", thread_data, last_issue, td_io_queue); /* ioengines.c: memcpy(&td->last_issue, ...) */
	P("info", thread_data, flags);
	P("info", thread_data, o);
	P("info", thread_options, iodepth);
	P("info", thread_options, td_ddir);
	P("info", thread_options, max_bs);
	P("info", thread_options, nr_files);
	P("info", thread_options, io_submit_mode);
	P("info", thread_options, read_iolog_file);
	S("imm", io_u);
	P("info", io_u, ddir);
	P("info", io_u, offset);
	P("info", io_u, xfer_buf);
	P("info", io_u, xfer_buflen);
	P("info", io_u, error);
	P("info", io_u, resid);
	P("info", io_u, issue_time);
	P("info", io_u, file);
	P("info", io_u, index);
	S("imm", fio_file);
	P("info", fio_file, file_name);
	P("info", fio_file, filetype);
	P("info", fio_file, fd);
	P("info", fio_file, real_file_size);
	P("info", fio_file, flags);
	P("info", fio_file, engine_pos);
	return 0;
}
