# Sourced by the image build scripts: what an image without a base image
# needs beside a binary.

# copy_linked_libraries BINARY ROOTFS: every library BINARY links, and the
# loader (the ldd line with no `=>` names it), copied into ROOTFS at the
# paths the binary looks for them.
copy_linked_libraries() {
    local bin="$1" rootfs="$2" first arrow path lib
    ldd "$bin" | while read -r first arrow path _; do
        if [[ "$arrow" == "=>" && "$path" == /* ]]; then lib="$path"
        elif [[ "$first" == /* ]]; then lib="$first"
        else continue; fi
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}
