# magma_proto_library(<target> PROTO_ROOT <dir> PROTOS <files...> [GRPC])
# Generates C++ (and, with GRPC, gRPC service) code for .proto files below
# PROTO_ROOT and wraps it in a static library whose include path is the
# generated root, so users write #include "magma/config/config.pb.h".
function(magma_proto_library target)
  cmake_parse_arguments(ARG "GRPC" "PROTO_ROOT" "PROTOS" ${ARGN})
  set(out_dir ${CMAKE_BINARY_DIR}/gen/${target})
  file(MAKE_DIRECTORY ${out_dir})
  set(srcs)
  foreach(proto ${ARG_PROTOS})
    file(RELATIVE_PATH rel ${ARG_PROTO_ROOT} ${proto})
    string(REGEX REPLACE "\\.proto$" "" base ${rel})
    set(outputs ${out_dir}/${base}.pb.cc ${out_dir}/${base}.pb.h)
    set(plugin_args)
    if(ARG_GRPC)
      list(APPEND outputs ${out_dir}/${base}.grpc.pb.cc ${out_dir}/${base}.grpc.pb.h)
      set(plugin_args --grpc_out=${out_dir}
                      --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin>)
    endif()
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND protobuf::protoc
      ARGS --proto_path=${ARG_PROTO_ROOT} --cpp_out=${out_dir} ${plugin_args} ${proto}
      DEPENDS ${proto} protobuf::protoc
      COMMENT "protoc ${rel}"
      VERBATIM)
    list(APPEND srcs ${outputs})
  endforeach()
  add_library(${target} STATIC ${srcs})
  target_include_directories(${target} SYSTEM PUBLIC ${out_dir})
  target_link_libraries(${target} PUBLIC protobuf::libprotobuf)
  if(ARG_GRPC)
    target_link_libraries(${target} PUBLIC gRPC::grpc++)
  endif()
  # Generated code is not ours to warn about.
  target_compile_options(${target} PRIVATE -w)
endfunction()
