// SPDX-License-Identifier: GPL-2.0
/*
 * Prints the sizes and offsets, under the fetched fio headers, of the fio
 * structures homi_engine.c touches, one "KIND NAME VALUE" line each:
 *   disp: a field offset the installed fio binary must use as a displacement
 *   imm:  a structure size it must use as an immediate (allocation, indexing)
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

int main(void)
{
	S("imm", thread_data);
	S("imm", thread_options);
	P("disp", thread_data, eo);
	P("disp", thread_data, io_ops);
	P("disp", thread_data, io_ops_data);
	P("disp", thread_data, files);
	P("disp", thread_data, files_index);
	P("disp", thread_data, orig_buffer);
	P("disp", thread_data, orig_buffer_size);
	P("disp", thread_data, error);
	P("disp", thread_data, first_error);
	P("disp", thread_data, verror);
	P("disp", thread_data, parent);
	P("info", thread_data, flags);
	P("info", thread_data, o);
	P("info", thread_options, iodepth);
	P("info", thread_options, td_ddir);
	P("info", thread_options, max_bs);
	P("info", thread_options, nr_files);
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
